"""Placeholder tokens never reach a prefix-cache key.

With overlapped scheduling a request's last token can be a PLACEHOLDER (sampled by a step still on
the device) when the next step is scheduled and cache_full_blocks runs. A block whose tokens include
the placeholder must not be registered: its key would hash -1 in place of the real token, a later
request could never hit it, and, worse, the block would be marked hashed, so it is never registered
under its real key. Once the token is resolved (Scheduler.update calls cache_full_blocks again) the
block is registered under the key of its real tokens. No model: KVCacheManager and Scheduler driven
with plain Requests, as in test_block_pool.py and test_scheduler_units.py.
"""
from __future__ import annotations

from engine import GenerationConfig
from engine.kv_cache import KVCacheManager, block_key, root_key
from engine.request import PLACEHOLDER, FinishReason, Request
from engine.scheduler import Scheduler

BLOCK = 4
PROMPT = list(range(10, 10 + 2 * BLOCK - 1))  # 7 tokens: block 0 full, block 1 one token short
SAMPLED = 777  # the token the "device" samples at index 7, completing block 1


def _request(tokens, rid, max_new=8) -> Request:
    return Request(rid, list(tokens), GenerationConfig(max_new_tokens=max_new), frozenset(),
                   max_tokens=len(tokens) + max_new, seed=0)


def _keys(tokens) -> list[bytes]:
    """The chained prefix-cache key of each full block of `tokens` (no salt)."""
    keys, parent = [], root_key(None)
    for i in range(len(tokens) // BLOCK):
        parent = block_key(parent, tokens[i * BLOCK:(i + 1) * BLOCK])
        keys.append(parent)
    return keys


def test_block_ending_in_a_placeholder_is_registered_only_once_resolved():
    kv = KVCacheManager(8, BLOCK, enable_prefix_caching=True)
    r = _request(PROMPT, "r")
    # Step 1 (what Scheduler._scheduled does): the prompt is one chunk that samples token 7.
    kv.match_prefix(r)
    assert kv.allocate(r, len(PROMPT))
    kv.cache_full_blocks(r, len(PROMPT))
    r.num_computed_tokens = len(PROMPT)
    index = r.append_placeholder()
    assert index == 2 * BLOCK - 1 and r.token_ids[-1] == PLACEHOLDER
    assert r.num_hashed_blocks == 1
    kv.check_invariants([r])

    # Step 2 is scheduled before step 1's token reaches the host: it feeds the placeholder, and
    # block 1 (tokens 4..7) is full within the scheduled tokens, but its last token is unknown.
    assert kv.allocate(r, 1)
    assert len(r.block_ids) == 2
    block1 = r.block_ids[1]
    kv.cache_full_blocks(r, 2 * BLOCK)
    r.num_computed_tokens = 2 * BLOCK
    r.append_placeholder()
    with_placeholder = _keys(PROMPT + [PLACEHOLDER])
    assert with_placeholder[1] not in kv.cached, "a block was registered under a key hashing a placeholder"
    assert kv.block_key[block1] is None
    assert r.num_hashed_blocks == 1 and len(r.block_hashes) == 1
    kv.check_invariants([r])
    # Nothing findable for the real tokens yet either: a newcomer hits block 0 only.
    real = _keys(PROMPT + [SAMPLED])
    assert real[0] in kv.cached and real[1] not in kv.cached

    # Step 1's token arrives (Scheduler.update): the placeholder is resolved and the block registered.
    r.resolve(index, SAMPLED)
    kv.cache_full_blocks(r, r.num_computed_tokens)
    assert kv.cached.get(real[1]) == block1 and kv.block_key[block1] == real[1]
    assert r.num_hashed_blocks == 2 and r.block_hashes == real
    assert with_placeholder[1] not in kv.cached
    kv.check_invariants([r])

    # And a request with the real tokens is served both blocks from the cache.
    other = _request(PROMPT + [SAMPLED, 5], "other")
    kv.match_prefix(other)
    assert other.block_ids == r.block_ids and other.num_cached_tokens == 2 * BLOCK


def test_overlapped_scheduler_registers_the_block_after_update():
    # The same through the Scheduler: step 2 is planned before step 1 is updated (overlap).
    kv = KVCacheManager(16, BLOCK, enable_prefix_caching=True)
    scheduler = Scheduler(kv, max_batch_size=4, max_num_batched_tokens=64)
    r = _request(PROMPT, "r")
    scheduler.add(r)
    step1 = scheduler.schedule()
    assert [(s.request.request_id, s.start, s.num_new_tokens) for s in step1.scheduled] == [("r", 0, 7)]
    step2 = scheduler.schedule()  # feeds token 7, still a placeholder on the host
    assert [(s.request.request_id, s.start, s.num_new_tokens) for s in step2.scheduled] == [("r", 7, 1)]
    assert r.token_ids[2 * BLOCK - 1] == PLACEHOLDER
    block1 = r.block_ids[1]
    assert kv.block_key[block1] is None and _keys(PROMPT + [PLACEHOLDER])[1] not in kv.cached
    assert r.num_hashed_blocks == 1
    scheduler.check_invariants()

    def never_stop(request, token, index):
        return None

    scheduler.update(step1, [SAMPLED], never_stop)
    real = _keys(PROMPT + [SAMPLED])
    assert kv.cached.get(real[1]) == block1 and r.num_hashed_blocks == 2
    scheduler.check_invariants()
    scheduler.update(step2, [SAMPLED + 1], never_stop)
    scheduler.check_invariants()
    scheduler.abort(r, FinishReason.ABORT)
    # The finished request's blocks stay cached for the next request with the same tokens.
    other = _request(PROMPT + [SAMPLED, 5], "other")
    kv.match_prefix(other)
    assert other.num_cached_tokens == 2 * BLOCK
