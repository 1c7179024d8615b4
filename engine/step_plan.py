"""The step plan: what one forward computes, as plain data (ids, positions, block tables, sampling).

The scheduler decides with live Request objects (SchedulerOutput); `build_step_plan` turns its
decision into a StepPlan that holds no Request, so the executor can hand it to the model runner of
every tensor-parallel rank (rank 0 schedules once and broadcasts it) and the runner writes nothing
back onto requests: it returns the sampled ids, which the scheduler puts in place (scheduler.update).

The plan carries, per scheduled request, its new input tokens and its whole block table (identical on
every rank: each rank's KV cache holds its own heads of the same blocks), and, for the requests that
sample, what the sampler needs (SamplingBatch). Only rank 0 samples, so workers are sent the plan
without its sampling part.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .generation import GenerationConfig
from .request import PLACEHOLDER, Request
from .scheduler import SchedulerOutput


@dataclass(frozen=True, slots=True)
class SamplingSpec:
    """A request's sampling settings that never change while it runs; built once per request."""

    gen: GenerationConfig
    seed: int
    bad_token_ids: tuple[int, ...]
    stop_token_ids: tuple[int, ...]  # banned while fewer than gen.min_new_tokens outputs exist
    # argmax of the raw logits is the whole job once min_new_tokens is reached (no sampling, penalties,
    # bans or logprobs): the common benchmark case, which needs no per-row tensors at all
    plain_greedy: bool

    @classmethod
    def of(cls, request: Request) -> "SamplingSpec":
        g = request.gen
        plain = g.greedy and not g.uses_penalties and g.logprobs is None and not request.bad_token_ids
        return cls(g, request.seed, tuple(request.bad_token_ids), tuple(sorted(request.stop_token_ids)), plain)


@dataclass(slots=True)
class SamplingBatch:
    """The rows that sample this step, in plan order: their specs and where each request stands."""

    specs: list[SamplingSpec]
    output_indices: list[int]  # index in each request's output of the token being sampled
    # The token history, only when some row needs it (None otherwise, so a plain batch copies nothing):
    seen: list[list[int]] | None = None  # prompt + known outputs: repetition penalty
    outputs: list[list[int]] | None = None  # known outputs: presence and frequency penalties


@dataclass(slots=True)
class PlannedRequest:
    """One scheduled request: tokens start .. start + num_new_tokens - 1 are computed this step."""

    start: int
    num_new_tokens: int
    input_ids: list[int]  # those tokens; only the last may be PLACEHOLDER (sampled by the step in flight)
    block_ids: list[int]  # the request's block table
    sample: bool  # this step samples the request's next token
    patch_row: int  # the last input is PLACEHOLDER: its row in the previous step's sampled ids; else -1
    # gen.prompt_logprobs: the prompt tokens this chunk's rows predict (start + 1 ..), scored; else None
    prompt_targets: list[int] | None = None


@dataclass(slots=True)
class StepPlan:
    requests: list[PlannedRequest]
    num_tokens: int
    num_sampling: int  # requests with sample=True (rows of the sampled ids, in plan order)
    sampling: SamplingBatch | None = None  # rank 0 only: workers do not sample

    def for_workers(self) -> "StepPlan":
        """The plan without its sampling part: what the other ranks need to run the forward."""
        return dataclasses.replace(self, sampling=None)


def sampling_spec(request: Request) -> SamplingSpec:
    spec = request.sampling_spec
    if spec is None:
        spec = request.sampling_spec = SamplingSpec.of(request)
    return spec


def sampling_batch(requests: list[Request]) -> SamplingBatch:
    """The sampling rows of `requests`, each about to sample the token its last placeholder stands for."""
    specs = [sampling_spec(r) for r in requests]
    batch = SamplingBatch(specs, [r.num_tokens - 1 - r.num_prompt_tokens for r in requests])
    if any(s.gen.repetition_penalty != 1.0 for s in specs):
        batch.seen = [r.token_ids[:r.num_known_tokens] for r in requests]
    if any(s.gen.presence_penalty or s.gen.frequency_penalty for s in specs):
        batch.outputs = [r.output_token_ids for r in requests]
    return batch


def build_step_plan(out: SchedulerOutput) -> StepPlan:
    """The plan of a schedule, right after `Scheduler.schedule` (each sampling request's placeholder is
    its last token). Records on each sampling request the row its token will have in the sampled ids
    (Request.sample_row), which the next plan names when that token is one of its inputs."""
    planned: list[PlannedRequest] = []
    sampling: list[Request] = []
    num_tokens = 0
    for item in out.scheduled:
        r, start, n = item.request, item.start, item.num_new_tokens
        end = start + n
        inputs = [r.token_ids[start]] if n == 1 else r.token_ids[start:end]
        patch = r.sample_row if inputs[-1] == PLACEHOLDER else -1
        targets = None
        if r.gen.prompt_logprobs:
            # rows start .. end - 1 predict tokens start + 1 .. end; only prompt tokens are scored
            last = min(end, r.num_prompt_tokens - 1)
            if last > start:
                targets = r.token_ids[start + 1:last + 1]
        if item.sample:
            r.sample_row = len(sampling)
            sampling.append(r)
        planned.append(PlannedRequest(start, n, inputs, r.block_ids, item.sample, patch, targets))
        num_tokens += n
    return StepPlan(planned, num_tokens, len(sampling), sampling_batch(sampling) if sampling else None)
