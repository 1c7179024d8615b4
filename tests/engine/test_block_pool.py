"""The KV block pool as a state machine: exact ref counts, free counts and eviction order after every
share / preempt / finish / evict operation, KVCacheManager.check_invariants itself, and a randomized
run against a plain-list reference model. No model: KVCacheManager driven with plain Requests.
"""
from __future__ import annotations

import random

import pytest

from engine import GenerationConfig
from engine.kv_cache import KVCacheInvariantError, KVCacheManager, block_key, root_key
from engine.request import FinishReason, Request

BLOCK = 4


def _request(tokens, rid, salt=None) -> Request:
    return Request(rid, list(tokens), GenerationConfig(cache_salt=salt), frozenset(),
                   max_tokens=len(tokens) + 64, seed=0)


class Pool:
    """A KVCacheManager plus the live requests, checked after every operation.

    Operations do what the scheduler does to the manager: admit = match the prefix, then allocate
    and register the rest of the prompt as one scheduled chunk.
    """

    def __init__(self, num_blocks: int, prefix_caching: bool = True):
        self.kv = KVCacheManager(num_blocks, BLOCK, enable_prefix_caching=prefix_caching)
        self.live: list[Request] = []

    def check(self) -> None:
        self.kv.check_invariants(self.live)

    def admit(self, tokens, rid, salt=None) -> Request:
        request = _request(tokens, rid, salt)
        self.kv.match_prefix(request)
        self.live.append(request)
        assert self.kv.allocate(request, request.num_tokens - request.num_computed_tokens)
        self.kv.cache_full_blocks(request, request.num_tokens)
        request.num_computed_tokens = request.num_tokens
        self.check()
        return request

    def decode(self, request: Request, token: int) -> None:
        request.token_ids.append(token)
        assert self.kv.allocate(request, 1)
        request.num_computed_tokens += 1
        self.kv.cache_full_blocks(request, request.num_computed_tokens)
        self.check()

    def finish(self, request: Request) -> None:
        self.kv.free(request)
        request.finish(FinishReason.STOP)
        self.live.remove(request)
        self.check()

    def preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.num_computed_tokens = 0
        self.check()

    def readmit(self, request: Request) -> None:
        self.kv.match_prefix(request)
        assert self.kv.allocate(request, request.num_tokens - request.num_computed_tokens)
        self.kv.cache_full_blocks(request, request.num_tokens)
        request.num_computed_tokens = request.num_tokens
        self.check()

    def refs(self, blocks) -> list[int]:
        return [self.kv.ref_counts[b] for b in blocks]

    def free_set(self) -> set[int]:
        return set(self.kv.free_blocks)


def cached_blocks(kv: KVCacheManager, tokens, salt=None) -> int:
    """How many leading full blocks of `tokens` the cache holds, looked up without touching the pool."""
    parent, n = root_key(salt), 0
    for i in range(len(tokens) // BLOCK):
        parent = block_key(parent, tokens[i * BLOCK:(i + 1) * BLOCK])
        if parent not in kv.cached:
            break
        n += 1
    return n


# -- sharing ---------------------------------------------------------------------------------------
def test_one_sharer_finishing_leaves_the_others_blocks_referenced_and_off_the_free_list():
    pool = Pool(8)
    a = pool.admit(range(13), "a")  # 3 full blocks + 1 token
    assert a.block_ids == [0, 1, 2, 3]
    assert pool.refs(range(8)) == [1, 1, 1, 1, 0, 0, 0, 0] and pool.kv.num_free_blocks == 4

    b = pool.admit(list(range(12)) + [99, 98], "b")  # the same 3 full blocks, its own tail
    assert b.block_ids == [0, 1, 2, 4] and b.num_cached_tokens == 12
    assert pool.refs(range(8)) == [2, 2, 2, 1, 1, 0, 0, 0] and pool.kv.num_free_blocks == 3

    pool.finish(a)
    assert pool.refs(range(8)) == [1, 1, 1, 0, 1, 0, 0, 0]
    assert pool.kv.num_free_blocks == 4  # a's own tail only; a bug counting 7 frees b's live blocks
    assert pool.free_set() == {3, 5, 6, 7} and not pool.free_set() & set(b.block_ids)

    # Under pressure the pool hands out every free block, and none of b's.
    c = pool.admit(range(100, 116), "c")
    assert sorted(c.block_ids) == [3, 5, 6, 7] and pool.kv.num_free_blocks == 0
    assert pool.refs(range(8)) == [1] * 8
    d = _request(range(200, 204), "d")
    assert not pool.kv.allocate(d, 4)  # refused, and nothing changed
    assert d.block_ids == [] and pool.refs(range(8)) == [1] * 8
    pool.check()

    pool.finish(b)
    assert pool.refs(range(8)) == [0, 0, 0, 1, 0, 1, 1, 1] and pool.kv.num_free_blocks == 4
    pool.finish(c)
    assert pool.refs(range(8)) == [0] * 8 and pool.kv.num_free_blocks == 8


def test_three_sharers_count_each_reference():
    pool = Pool(8)
    prompt = list(range(9))  # 2 full blocks + 1
    a = pool.admit(prompt, "a")
    b = pool.admit(prompt, "b")
    c = pool.admit(prompt, "c")
    assert a.block_ids[:2] == b.block_ids[:2] == c.block_ids[:2] == [0, 1]
    assert pool.refs([0, 1]) == [3, 3] and pool.kv.num_free_blocks == 8 - 2 - 3
    for request, left in ((b, 2), (a, 1)):
        pool.finish(request)
        assert pool.refs([0, 1]) == [left, left] and not pool.free_set() & {0, 1}
    pool.finish(c)
    assert pool.refs([0, 1]) == [0, 0] and pool.kv.num_free_blocks == 8


def test_a_cached_free_block_is_reshared():
    pool = Pool(8)
    prompt = list(range(13))
    a = pool.admit(prompt, "a")
    blocks = list(a.block_ids)
    pool.finish(a)
    assert pool.kv.num_free_blocks == 8 and cached_blocks(pool.kv, prompt) == 3  # cached blocks count as free

    b = pool.admit(prompt, "b")  # takes the 3 cached blocks off the free list, allocates one more
    assert b.block_ids[:3] == blocks[:3] and b.num_cached_tokens == 12
    assert pool.refs(blocks[:3]) == [1, 1, 1] and pool.kv.num_free_blocks == 4
    c = pool.admit(prompt, "c")
    assert c.block_ids[:3] == blocks[:3]
    assert pool.refs(blocks[:3]) == [2, 2, 2] and pool.kv.num_free_blocks == 3
    pool.finish(b)
    assert pool.refs(blocks[:3]) == [1, 1, 1] and pool.kv.num_free_blocks == 4
    pool.finish(c)
    assert pool.refs(blocks[:3]) == [0, 0, 0] and pool.kv.num_free_blocks == 8
    assert pool.kv.stats.hits == 24


def test_preemption_frees_and_the_recompute_rematches_its_own_blocks():
    pool = Pool(8)
    a = pool.admit(range(13), "a")
    b = pool.admit(list(range(12)) + [50], "b")  # shares a's 3 full blocks
    for token in (60, 61, 62, 63):  # b decodes into a 4th full block, then one more token
        pool.decode(b, token)
    assert b.num_tokens == 17 and b.num_hashed_blocks == 4 and len(b.block_ids) == 5
    b_blocks = list(b.block_ids)
    assert pool.refs(range(8)) == [2, 2, 2, 1, 1, 1, 0, 0] and pool.kv.num_free_blocks == 2

    pool.preempt(b)
    assert b.block_ids == [] and b.num_hashed_blocks == 0
    assert pool.refs(range(8)) == [1, 1, 1, 1, 0, 0, 0, 0] and pool.kv.num_free_blocks == 4
    assert cached_blocks(pool.kv, b.token_ids) == 4  # b's own full block stays cached while free

    pool.readmit(b)  # recompute: every full block comes back from the cache, one token is computed
    assert b.block_ids == [0, 1, 2, 4, 6] and b_blocks == [0, 1, 2, 4, 5] and b.num_cached_tokens == 16
    assert pool.refs(b_blocks[:3]) == [2, 2, 2] and pool.refs(b_blocks[3:4]) == [1]
    assert pool.kv.num_free_blocks == 2
    pool.finish(a)
    pool.finish(b)
    assert pool.kv.num_free_blocks == 8


def test_preemption_without_prefix_caching_frees_everything():
    pool = Pool(6, prefix_caching=False)
    a = pool.admit(range(9), "a")
    b = pool.admit(range(9), "b")  # no sharing without prefix caching
    assert not set(a.block_ids) & set(b.block_ids) and pool.kv.num_free_blocks == 0
    pool.preempt(b)
    assert pool.kv.num_free_blocks == 3 and pool.refs(a.block_ids) == [1, 1, 1]
    pool.readmit(b)
    assert b.num_cached_tokens == 0 and pool.kv.num_free_blocks == 0 and pool.kv.cached == {}


# -- eviction --------------------------------------------------------------------------------------
def test_eviction_takes_never_cached_blocks_then_least_recently_freed_tail_first():
    pool = Pool(10)
    a_prompt, b_prompt = list(range(9)), list(range(100, 109))  # 2 full blocks + 1 token each
    a = pool.admit(a_prompt, "a")
    b = pool.admit(b_prompt, "b")
    assert a.block_ids == [0, 1, 2] and b.block_ids == [3, 4, 5]
    pool.finish(a)  # a before b: a's blocks are the least recently freed
    pool.finish(b)

    taker = _request(range(1000, 1100), "taker")
    pool.live.append(taker)
    order = []
    for expected_a, expected_b in ((2, 2), (2, 2), (2, 2), (2, 2), (2, 2),  # never-used 6..9, then a's partial 2
                                   (1, 2), (0, 2),  # a's tail full block, then its head
                                   (0, 2),          # b's partial block
                                   (0, 1), (0, 0)):  # b's tail, then its head
        assert pool.kv.allocate(taker, BLOCK)
        taker.num_computed_tokens += BLOCK
        pool.check()
        order.append(taker.block_ids[-1])
        assert (cached_blocks(pool.kv, a_prompt), cached_blocks(pool.kv, b_prompt)) == (expected_a, expected_b)
    assert order == [6, 7, 8, 9, 2, 1, 0, 5, 4, 3]
    assert pool.kv.num_free_blocks == 0 and not pool.kv.allocate(taker, 1)


def test_a_reshared_block_is_not_evicted_and_returns_as_most_recently_freed():
    pool = Pool(6)
    prompt = list(range(9))
    a = pool.admit(prompt, "a")  # blocks 0, 1, 2
    pool.finish(a)
    other = pool.admit(range(100, 108), "other")  # 2 blocks: never-used 3, 4
    assert other.block_ids == [3, 4]
    b = pool.admit(prompt, "b")  # re-shares 0, 1 and takes 5
    assert b.block_ids == [0, 1, 5]
    pool.finish(other)  # other's blocks are now older than b's
    pool.finish(b)
    taker = _request(range(1000, 1100), "taker")
    pool.live.append(taker)
    assert pool.kv.allocate(taker, 3 * BLOCK)
    # Free order was: a's partial 2, other's 4, 3, then b's 5, 1, 0.
    assert taker.block_ids == [2, 4, 3] and cached_blocks(pool.kv, prompt) == 2
    pool.check()


# -- the invariant check itself --------------------------------------------------------------------
def _shared_pool():
    pool = Pool(8)
    a = pool.admit(range(13), "a")
    b = pool.admit(list(range(12)) + [7], "b")
    return pool, a, b


CORRUPTIONS = {
    "ref count set instead of incremented": (lambda p, a, b: p.kv.ref_counts.__setitem__(0, 1),
                                             "block 0 has ref count 1 but 2 live"),
    "shared block put on the free list": (lambda p, a, b: p.kv.free_blocks.__setitem__(1, None),
                                          "block 1 is on the free list with ref count 2"),
    "leaked block": (lambda p, a, b: p.kv.free_blocks.pop(7), "block 7 has ref count 0 but is not on the free"),
    "block twice in a table": (lambda p, a, b: b.block_ids.append(0), "holds a block twice"),
    "computed tokens beyond the table": (lambda p, a, b: setattr(a, "num_computed_tokens", 17),
                                         "17 computed tokens but 4 blocks"),
    "cache map points at another block": (lambda p, a, b: p.kv.cached.__setitem__(p.kv.block_key[0], 5),
                                           "cache maps key"),
    "hash that does not match the tokens": (lambda p, a, b: a.token_ids.__setitem__(5, 999),
                                            "hash of block 1 does not match its tokens"),
    "finished request holding blocks": (lambda p, a, b: a.finish(FinishReason.STOP), "finished request 'a'"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_check_invariants_names_each_corruption(name):
    pool, a, b = _shared_pool()
    corrupt, message = CORRUPTIONS[name]
    corrupt(pool, a, b)
    with pytest.raises(KVCacheInvariantError, match=message):
        pool.check()


def test_ref_counts_are_checked_against_the_live_requests_only_when_given():
    pool, a, b = _shared_pool()
    pool.kv.check_invariants()  # pool-only rules hold
    with pytest.raises(KVCacheInvariantError, match="block 4 has ref count 1 but 0 live"):
        pool.kv.check_invariants([a])  # b's blocks are referenced by no request given


# -- randomized, against a reference model ---------------------------------------------------------
class ReferencePool:
    """The pool's specification with plain lists: a block is identified by the whole token prefix
    (and salt) it ends, not by a hash chain; the free list is a list, front evicted first."""

    def __init__(self, num_blocks: int):
        self.free = list(range(num_blocks))
        self.ref = [0] * num_blocks
        self.prefix_of: list[tuple | None] = [None] * num_blocks
        self.block_of: dict[tuple, int] = {}
        self.tables: dict[str, list[int]] = {}
        self.hashed: dict[str, int] = {}

    @staticmethod
    def _prefix(request: Request, i: int) -> tuple:
        return (request.cache_salt,) + tuple(request.token_ids[:(i + 1) * BLOCK])

    def match(self, request: Request) -> int:
        hits = []
        for i in range((request.num_tokens - 1) // BLOCK):
            block = self.block_of.get(self._prefix(request, i))
            if block is None:
                break
            hits.append(block)
        for block in hits:
            if self.ref[block] == 0:
                self.free.remove(block)
            self.ref[block] += 1
        self.tables[request.request_id] = hits
        self.hashed[request.request_id] = len(hits)
        return len(hits) * BLOCK

    def allocate(self, request: Request, computed: int, n: int) -> bool:
        table = self.tables.setdefault(request.request_id, [])
        need = max(0, -(-(computed + n) // BLOCK) - len(table))
        if need > len(self.free):
            return False
        for _ in range(need):
            block = self.free.pop(0)
            if self.prefix_of[block] is not None:
                del self.block_of[self.prefix_of[block]]
                self.prefix_of[block] = None
            self.ref[block] = 1
            table.append(block)
        return True

    def register(self, request: Request, num_tokens: int) -> None:
        table = self.tables[request.request_id]
        full = num_tokens // BLOCK
        for i in range(self.hashed[request.request_id], full):
            prefix = self._prefix(request, i)
            if prefix not in self.block_of and self.prefix_of[table[i]] is None:
                self.block_of[prefix] = table[i]
                self.prefix_of[table[i]] = prefix
        self.hashed[request.request_id] = max(self.hashed[request.request_id], full)

    def release(self, request: Request) -> None:
        for block in reversed(self.tables.pop(request.request_id, [])):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free.append(block)
        self.hashed[request.request_id] = 0


PREFIXES = [list(range(10, 22)), list(range(30, 42)), list(range(50, 54))]


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_match_the_reference_model(seed):
    rng = random.Random(seed)
    num_blocks = rng.choice([6, 10, 16])
    kv = KVCacheManager(num_blocks, BLOCK, enable_prefix_caching=True)
    model = ReferencePool(num_blocks)
    live: list[Request] = []  # admitted (running or holding hits while waiting)
    preempted: list[Request] = []
    next_id = 0

    def compare(op):
        kv.check_invariants(live + preempted)
        assert kv.ref_counts == model.ref, op
        assert list(kv.free_blocks) == model.free, op
        for r in live + preempted:
            assert r.block_ids == model.tables.get(r.request_id, []), (op, r.request_id)

    def compute(request, n):
        """Schedule n more tokens of `request` as the scheduler does: allocate, register, advance."""
        ok = kv.allocate(request, n)
        assert ok == model.allocate(request, request.num_computed_tokens, n)
        if ok:
            kv.cache_full_blocks(request, request.num_computed_tokens + n)
            model.register(request, request.num_computed_tokens + n)
            request.num_computed_tokens += n
        return ok

    for step in range(300):
        op = rng.choice(["admit", "admit", "compute", "decode", "decode", "finish", "preempt", "readmit"])
        if op == "admit" and len(live) < 6:
            prompt = rng.choice(PREFIXES)[:rng.randint(1, 12)] + [rng.randrange(5) for _ in range(rng.randint(0, 6))]
            request = _request(prompt, f"r{next_id}", salt=rng.choice([None, None, "s"]))
            next_id += 1
            kv.match_prefix(request)
            assert request.num_computed_tokens == model.match(request), step
            live.append(request)
            compute(request, rng.randint(1, request.num_tokens - request.num_computed_tokens))
        elif op == "readmit" and preempted:
            request = preempted.pop(0)
            kv.match_prefix(request)
            assert request.num_computed_tokens == model.match(request), step
            live.append(request)
        elif op == "compute":
            pending = [r for r in live if r.num_computed_tokens < r.num_tokens]
            if pending:
                request = rng.choice(pending)
                compute(request, rng.randint(1, request.num_tokens - request.num_computed_tokens))
        elif op == "decode":
            done = [r for r in live if r.num_computed_tokens == r.num_tokens]
            if done:
                request = rng.choice(done)
                request.token_ids.append(rng.randrange(5))
                if not compute(request, 1):
                    request.token_ids.pop()
        elif op in ("finish", "preempt") and live:
            request = live.pop(rng.randrange(len(live)))
            kv.free(request)
            model.release(request)
            if op == "finish":
                request.finish(FinishReason.STOP)
            else:
                request.num_computed_tokens = 0
                preempted.append(request)
        compare(f"step {step}: {op}")

    for request in live:
        kv.free(request)
    live.clear()
    kv.check_invariants(preempted)
    assert kv.num_free_blocks == num_blocks and kv.ref_counts == [0] * num_blocks
