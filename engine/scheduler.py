"""Continuous batching: which requests run in the next forward, and with how many tokens each.

There is no prefill phase: every request has num_computed_tokens catching up to num_tokens. Each step
takes running requests first, then waiting ones, within max_batch_size requests and a budget of
max_prefill_token_num tokens; a prompt longer than what is left of the budget is split into chunks
that run fused with other requests' decode tokens (dynamic split & fuse). When blocks run out, the
newest running request is preempted: its blocks are freed and it is recomputed later.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .kv_cache import KVCacheManager
from .request import FinishReason, Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # tokens computed by this step, starting at request.num_computed_tokens
    # True when this chunk reaches the end of the request's tokens: its last logits give a new token.
    sample: bool


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
        if request.is_finished:
            return
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.kv.free(request)
        request.finish(reason, error)
        self.stats.num_finished += 1

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # -- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.num_tokens - request.num_computed_tokens, budget)
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
            self.kv.match_prefix(request)
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self.kv.allocate(request, n):
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append(self._scheduled(request, n))
            budget -= n
        self.stats.num_steps += 1
        return out

    def _scheduled(self, request: Request, n: int) -> ScheduledRequest:
        end = request.num_computed_tokens + n
        self.kv.cache_full_blocks(request, end)
        return ScheduledRequest(request, n, sample=end == request.num_tokens)

    def _preempt(self, request: Request) -> None:
        """Free the request's blocks; it goes back to the front of the queue and is recomputed."""
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)

    def update(self, out: SchedulerOutput, sampled: list[int | None], check_stop) -> list[Request]:
        """Advance computed tokens, append sampled ones, finish stopped requests and free their blocks.

        `sampled[i]` is the token sampled for out.scheduled[i] (None for a chunk that samples nothing);
        `check_stop(request, token)` returns a FinishReason or None. Returns requests that got a token.
        """
        touched: list[Request] = []
        for item, token in zip(out.scheduled, sampled):
            request = item.request
            if request.is_finished:  # aborted while the step ran
                continue
            request.num_computed_tokens += item.num_new_tokens
            if token is None:
                continue
            request.append_token(token)
            touched.append(request)
            reason = check_stop(request, token)
            if reason is not None:
                self._finish(request, reason)
        return touched

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.finish(reason)
        self.stats.num_finished += 1
