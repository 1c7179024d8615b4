"""Continuous batching: which requests run in the next forward, and with how many tokens each.

There is no prefill phase: every request has num_computed_tokens catching up to num_tokens. Each step
takes running requests first, then waiting ones, within max_batch_size requests and a budget of
max_prefill_token_num tokens; a prompt longer than what is left of the budget is split into chunks
that run fused with other requests' decode tokens (dynamic split & fuse). When blocks run out, the
newest running request is preempted: its blocks are freed and it is recomputed later.

Scheduling is optimistic so the next step can be planned while this one runs on the device:
`schedule` advances num_computed_tokens and appends a placeholder for each token to be sampled;
`update` later puts the sampled token in its place and finishes requests that stopped.

`check_invariants` checks the queues and, through KVCacheManager.check_invariants, the block pool
against the live requests; the engine calls it after every step when EngineConfig.debug_invariants is on.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .kv_cache import KVCacheInvariantError, KVCacheManager
from .request import FinishReason, Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    start: int  # first token computed by this step (num_computed_tokens when scheduled)
    num_new_tokens: int
    # Index in request.token_ids of the placeholder for the token this step samples; -1 for a
    # prefill chunk that does not reach the end of the request's tokens.
    sample_index: int

    @property
    def sample(self) -> bool:
        return self.sample_index >= 0


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    num_steps: int = 0
    num_finished: int = 0


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_batch_size: int, max_num_batched_tokens: int):
        self.kv = kv
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()

    # -- queue management ------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def abort(self, request: Request, reason: FinishReason = FinishReason.ABORT, error: str | None = None) -> None:
        """Finish a request now, wherever it is, and free its blocks."""
        if not request.is_finished:
            self._finish(request, reason, error)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def check_invariants(self) -> None:
        """Raise KVCacheInvariantError if the queues or the block pool are inconsistent (debugging, tests)."""
        problems = []
        live = list(self.running) + list(self.waiting)
        if len({id(r) for r in live}) != len(live):
            problems.append("a request is queued twice (or both running and waiting)")
        if len(self.running) > self.max_batch_size:
            problems.append(f"{len(self.running)} requests running, more than max_batch_size {self.max_batch_size}")
        block_size = self.kv.block_size
        for request in live:
            expected = RequestStatus.RUNNING if request in self.running else RequestStatus.WAITING
            if request.status is not expected:
                problems.append(f"{request!r} is in the {expected.value} queue")
            if request.status is RequestStatus.WAITING and (request.block_ids or request.num_computed_tokens):
                problems.append(f"{request!r} is waiting but holds blocks {request.block_ids} (waiting requests hold none)")
            if not 0 <= request.num_computed_tokens <= request.num_tokens:
                problems.append(f"{request!r}: computed tokens outside 0..{request.num_tokens}")
            # allocate() grows a table only for the tokens being scheduled, so a live table never
            # holds a block beyond the one its last computed token is in.
            needed = -(-request.num_computed_tokens // block_size)
            if len(request.block_ids) > needed:
                problems.append(f"{request!r} holds {len(request.block_ids)} blocks, its {request.num_computed_tokens} "
                                f"computed tokens need {needed}")
        if problems:
            raise KVCacheInvariantError("scheduler invariant violated:\n  " + "\n  ".join(problems))
        self.kv.check_invariants(live)

    # -- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            remaining = request.num_tokens - request.num_computed_tokens
            if request.num_tokens >= request.max_tokens and remaining <= 1:
                i += 1  # its last token is still on the device and ends it: nothing left to compute
                continue
            n = min(remaining, budget)
            while not self.kv.allocate(request, n):
                victim = self.running.pop()
                self._preempt(victim)
                out.num_preempted += 1
                if victim is request:
                    break
            else:
                out.scheduled.append(self._scheduled(request, n))
                budget -= n
                i += 1
                continue
            break  # the request itself was preempted: nothing behind it is left either

        # Admit waiting requests only when nothing was preempted: a preemption means blocks are short.
        while (self.waiting and not out.num_preempted and budget > 0
               and len(self.running) < self.max_batch_size):
            request = self.waiting[0]
            cached = request.num_cached_tokens
            if not request.gen.prompt_logprobs:  # a scored prompt is computed in full
                self.kv.match_prefix(request)
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self.kv.allocate(request, n):
                # A waiting request must hold no blocks: a request preempted later goes in front of
                # it and may need exactly those blocks, and neither would ever run (deadlock).
                self.kv.undo_match(request)
                request.num_cached_tokens = cached
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append(self._scheduled(request, n))
            budget -= n
        self.stats.num_steps += 1
        return out

    def _scheduled(self, request: Request, n: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        end = start + n
        self.kv.cache_full_blocks(request, end)
        request.num_computed_tokens = end
        sample_index = request.append_placeholder() if end == request.num_tokens else -1
        return ScheduledRequest(request, start, n, sample_index)

    def _preempt(self, request: Request) -> None:
        """Free the request's blocks; it goes back to the front of the queue and is recomputed."""
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)

    def update(self, out: SchedulerOutput, sampled: list[int | None], check_stop) -> list[tuple[Request, int]]:
        """Put sampled tokens in place of their placeholders, finish stopped requests, free their blocks.

        `sampled[i]` is the token sampled for out.scheduled[i] (None for a chunk that samples nothing);
        `check_stop(request, token, index)` returns a FinishReason or None. Returns (request, index of
        the new token) for every request that got one.
        """
        touched: list[tuple[Request, int]] = []
        for item, token in zip(out.scheduled, sampled):
            request = item.request
            if token is None or request.is_finished:  # a prefill chunk, or aborted while the step ran
                continue
            request.resolve(item.sample_index, token)
            touched.append((request, item.sample_index))
            reason = check_stop(request, token, item.sample_index)
            if reason is not None:
                self._finish(request, reason)
            else:
                self.kv.cache_full_blocks(request, request.num_computed_tokens)
        return touched

    def _finish(self, request: Request, reason: FinishReason, error: str | None = None) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:  # waiting: never admitted, or preempted while its last step was still running
            self.waiting.remove(request)
        request.drop_placeholders()
        self.kv.free(request)
        request.finish(reason, error)
        self.stats.num_finished += 1
