"""Scheduler unit tests without a model: a Scheduler on a KVCacheManager, plain token-id Requests, and
a fake runner that samples token 1000 + index for every placeholder. Each step's plan is checked at
exact numbers (who runs, from which token, how many, whether it samples), and the scheduler's and
block pool's invariants after every step.
"""
from __future__ import annotations

import random

import pytest

from engine import GenerationConfig
from engine.kv_cache import KVCacheManager
from engine.request import FinishReason, Request, RequestStatus
from engine.scheduler import Scheduler

BLOCK = 4
FAKE = 1000  # the fake runner samples FAKE + the token's index


def make_scheduler(num_blocks=64, max_batch_size=8, budget=64, prefix_caching=False) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, BLOCK, prefix_caching), max_batch_size, budget)


def make_request(rid: str, tokens, max_new: int, salt=None) -> Request:
    tokens = list(range(tokens)) if isinstance(tokens, int) else list(tokens)
    gen = GenerationConfig(max_new_tokens=max_new, cache_salt=salt)
    return Request(rid, tokens, gen, frozenset(), max_tokens=len(tokens) + max_new, seed=0)


def check_stop(request: Request, token: int, index: int):
    return FinishReason.LENGTH if index + 1 >= request.max_tokens else None


def step(scheduler: Scheduler):
    """schedule -> fake forward -> update, as LLMEngine.step without overlap; returns the plan as
    (request id, start, tokens, samples) tuples and the number preempted."""
    out = scheduler.schedule()
    assert out.num_tokens <= scheduler.max_num_batched_tokens
    sampled = [FAKE + item.sample_index if item.sample else None for item in out.scheduled]
    scheduler.update(out, sampled, check_stop)
    scheduler.check_invariants()
    plan = [(item.request.request_id, item.start, item.num_new_tokens, item.sample) for item in out.scheduled]
    return plan, out.num_preempted


def plans(scheduler: Scheduler, n: int) -> list[list[tuple]]:
    result = []
    for _ in range(n):
        plan, preempted = step(scheduler)
        assert preempted == 0
        result.append(plan)
    return result


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


# -- budgets ---------------------------------------------------------------------------------------
def test_running_decode_comes_first_and_a_new_prompt_gets_what_is_left_of_the_budget():
    s = make_scheduler(budget=8)
    b = make_request("b", 3, max_new=10)
    s.add(b)
    assert plans(s, 1) == [[("b", 0, 3, True)]]
    a = make_request("a", 20, max_new=2)
    s.add(a)
    assert plans(s, 5) == [
        [("b", 3, 1, True), ("a", 0, 7, False)],  # 8 - b's decode token
        [("b", 4, 1, True), ("a", 7, 7, False)],  # a, now running, still gets only what b leaves
        [("b", 5, 1, True), ("a", 14, 6, True)],  # the last chunk samples a's first token
        [("b", 6, 1, True), ("a", 20, 1, True)],  # a's second and last token
        [("b", 7, 1, True)],
    ]
    assert a.is_finished and a.output_token_ids == [FAKE + 20, FAKE + 21]
    assert not b.is_finished and b.output_token_ids == [FAKE + i for i in range(3, 9)]


def test_long_prompt_is_chunked_at_the_budget_and_samples_only_at_its_end():
    s = make_scheduler(budget=6)
    a = make_request("a", 20, max_new=1)
    s.add(a)
    tables = []
    expected = [[("a", 0, 6, False)], [("a", 6, 6, False)], [("a", 12, 6, False)], [("a", 18, 2, True)]]
    for plan in expected:
        assert step(s) == (plan, 0)
        tables.append(len(a.block_ids))
    assert tables == [2, 3, 5, 0]  # blocks for the computed tokens only; freed when a finishes
    assert a.is_finished and a.output_token_ids == [FAKE + 20] and a.num_tokens == 21
    assert s.kv.num_free_blocks == 64


def test_two_chunked_prompts_share_one_budget():
    s = make_scheduler(budget=8)
    s.add(make_request("a", 10, max_new=3))
    s.add(make_request("b", 20, max_new=1))
    assert plans(s, 5) == [
        [("a", 0, 8, False)],  # the budget is spent: b is not admitted with 0 tokens
        [("a", 8, 2, True), ("b", 0, 6, False)],
        [("a", 10, 1, True), ("b", 6, 7, False)],
        [("a", 11, 1, True), ("b", 13, 7, True)],  # a finishes (3 tokens), b samples its only token
        [],
    ]
    assert s.num_unfinished == 0 and s.kv.num_free_blocks == 64


def test_max_batch_size_caps_the_running_requests():
    s = make_scheduler(max_batch_size=2)
    for rid, new in (("a", 3), ("b", 5), ("c", 2)):
        s.add(make_request(rid, 4, max_new=new))
    assert step(s) == ([("a", 0, 4, True), ("b", 0, 4, True)], 0)
    assert ids(s.running) == ["a", "b"] and ids(s.waiting) == ["c"]
    assert plans(s, 4) == [
        [("a", 4, 1, True), ("b", 4, 1, True)],
        [("a", 5, 1, True), ("b", 5, 1, True)],  # a's last token: c is admitted at the next schedule
        [("b", 6, 1, True), ("c", 0, 4, True)],
        [("b", 7, 1, True), ("c", 4, 1, True)],  # both finish
    ]
    assert s.num_unfinished == 0 and s.stats.num_finished == 3


def test_max_batch_size_one_runs_requests_one_after_another():
    s = make_scheduler(max_batch_size=1)
    for rid in "abc":
        s.add(make_request(rid, 2, max_new=2))
    assert plans(s, 6) == [[("a", 0, 2, True)], [("a", 2, 1, True)], [("b", 0, 2, True)], [("b", 2, 1, True)],
                           [("c", 0, 2, True)], [("c", 2, 1, True)]]


# -- preemption ------------------------------------------------------------------------------------
def test_the_newest_request_is_preempted_when_blocks_run_out_and_recomputed_later():
    s = make_scheduler(num_blocks=6)
    a = make_request("a", 8, max_new=8)
    b = make_request("b", 8, max_new=8)
    s.add(a)
    s.add(b)
    assert plans(s, 5) == [[("a", 0, 8, True), ("b", 0, 8, True)]] + [
        [("a", i, 1, True), ("b", i, 1, True)] for i in range(8, 12)]
    assert s.kv.num_free_blocks == 0  # 3 blocks each
    # a needs a 4th block: b, the newest, is preempted; a runs alone.
    assert step(s) == ([("a", 12, 1, True)], 1)
    assert b.status is RequestStatus.WAITING and b.num_computed_tokens == 0 and b.block_ids == []
    assert b.num_preemptions == 1 and a.num_preemptions == 0 and s.stats.num_preemptions == 1
    assert b.output_token_ids == [FAKE + i for i in range(8, 13)]  # its tokens stay
    # b needs 4 blocks to recompute its 13 tokens; 2 are free until a finishes.
    assert plans(s, 2) == [[("a", 13, 1, True)], [("a", 14, 1, True)]]
    assert a.is_finished and a.output_token_ids == [FAKE + i for i in range(8, 16)]
    # The recompute: prompt and sampled tokens in one chunk, then decoding goes on.
    assert plans(s, 3) == [[("b", 0, 13, True)], [("b", 13, 1, True)], [("b", 14, 1, True)]]
    assert b.is_finished and b.output_token_ids == [FAKE + i for i in range(8, 16)]
    assert s.kv.num_free_blocks == 6


def test_the_newest_request_preempts_itself_when_it_is_the_one_short_of_blocks():
    s = make_scheduler(num_blocks=3)
    a = make_request("a", 2, max_new=2)  # 1 block for good
    b = make_request("b", 8, max_new=4)  # 2 blocks, then a 3rd at its 9th token
    s.add(a)
    s.add(b)
    assert step(s) == ([("a", 0, 2, True), ("b", 0, 8, True)], 0)
    # b, the newest, cannot grow: it is preempted, not a, which runs and finishes.
    assert step(s) == ([("a", 2, 1, True)], 1)
    assert a.is_finished and a.num_preemptions == 0 and b.num_preemptions == 1
    assert ids(s.waiting) == ["b"] and b.block_ids == []
    assert plans(s, 3) == [[("b", 0, 9, True)], [("b", 9, 1, True)], [("b", 10, 1, True)]]
    assert b.is_finished and b.output_token_ids == [FAKE + i for i in range(8, 12)]


# -- prefix cache ----------------------------------------------------------------------------------
def test_prefix_hits_reduce_the_scheduled_tokens():
    s = make_scheduler(num_blocks=32, prefix_caching=True)
    s.add(make_request("a", 14, max_new=1))
    s.add(make_request("b", list(range(12)) + [50, 51, 52], max_new=1))
    # b shares a's 3 full blocks registered when a's chunk was scheduled, in the same step.
    assert step(s) == ([("a", 0, 14, True), ("b", 12, 3, True)], 0)
    c = make_request("c", 14, max_new=2)  # a's prompt, from blocks whose users finished
    d = make_request("d", 12, max_new=1)  # exactly 3 blocks: the last must be computed for its logits
    e = make_request("e", 14, max_new=1, salt="tenant")  # another salt shares nothing
    for r in (c, d, e):
        s.add(r)
    assert step(s) == ([("c", 12, 2, True), ("d", 8, 4, True), ("e", 0, 14, True)], 0)
    assert (c.num_cached_tokens, d.num_cached_tokens, e.num_cached_tokens) == (12, 8, 0)
    assert s.kv.stats.hits == 12 + 12 + 8 and s.kv.stats.queries == 14 + 15 + 14 + 12 + 14


def test_a_waiting_request_does_not_hold_prefix_blocks_that_the_queue_head_needs():
    """Found by these tests: a waiting request kept the prefix blocks it matched when its allocation
    failed; a request preempted later went in front of it, needed those blocks, and neither ran again:
    every later step was empty (the engine spun forever)."""
    s = make_scheduler(num_blocks=8, prefix_caching=True)
    s.add(make_request("x", 9, max_new=1))  # caches blocks of tokens 0..7
    assert step(s) == ([("x", 0, 9, True)], 0)
    r1 = make_request("r1", range(100, 124), max_new=8)  # 24 + 8 tokens: the whole pool at the end
    h = make_request("h", list(range(8)) + [77], max_new=4)  # would hit x's 2 cached blocks
    s.add(r1)
    s.add(h)
    assert step(s) == ([("r1", 0, 24, True)], 0)  # h matched, could not allocate, gave its hits back
    assert h.block_ids == [] and h.num_computed_tokens == 0
    for _ in range(40):
        if s.num_unfinished == 0:
            break
        plan, preempted = step(s)
        assert plan or preempted, "no progress: the scheduler is stuck"
    assert r1.is_finished and h.is_finished
    assert r1.output_token_ids == [FAKE + i for i in range(24, 32)]
    assert h.output_token_ids == [FAKE + i for i in range(9, 13)]
    assert s.kv.stats.queries == 9 + 24 + 9  # failed admissions are not counted twice


# -- randomized ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(16))
def test_random_workloads_finish_exactly_within_budget_and_batch(seed):
    rng = random.Random(seed)
    num_blocks = rng.choice([8, 12, 24])
    s = make_scheduler(num_blocks=num_blocks, max_batch_size=rng.choice([1, 2, 4, 8]),
                       budget=rng.choice([4, 7, 16, 64]), prefix_caching=rng.random() < 0.7)
    # Few prefixes cut at block boundaries and bursts of arrivals: blocks are shared under pressure.
    prefixes = [list(range(10, 26)), list(range(40, 52))]
    pending, requests = [], []
    for i in range(24):
        prefix = rng.choice(prefixes)
        prompt = prefix[:rng.choice(range(BLOCK, len(prefix) + 1, BLOCK))] + [rng.randrange(5) for _ in
                                                                              range(rng.randint(0, 6))]
        max_new = rng.randint(1, min(12, num_blocks * BLOCK - len(prompt)))  # every request fits the pool
        pending.append((rng.choice([0, 0, 3, 10, 20]), make_request(f"r{i}", prompt, max_new)))
    for steps in range(2000):
        for arrival, request in pending:
            if arrival == steps:
                s.add(request)
                requests.append(request)
        running_before = list(s.running)
        plan, preempted = step(s)
        assert len(s.running) <= s.max_batch_size
        assert all(n >= 1 for _, _, n, _ in plan)
        # Requests that were running come first, in their order; newly admitted ones after them.
        planned = [rid for rid, _, _, _ in plan]
        carried = [r.request_id for r in running_before if r.request_id in planned]
        assert planned[:len(carried)] == carried
        if s.num_unfinished:
            assert plan or preempted, f"step {steps}: requests wait but nothing ran"
        elif len(requests) == len(pending):
            break
    assert all(r.is_finished for r in requests) and len(requests) == 24
    for r in requests:
        assert r.output_token_ids == [FAKE + i for i in range(r.num_prompt_tokens, r.max_tokens)], r
    assert s.kv.num_free_blocks == num_blocks
