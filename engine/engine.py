"""LLMEngine: requests in, token and text deltas out; one `step()` = schedule -> run -> update.

The engine owns the tokenizer, the executor (engine/executor/: the model runner on one rank, or on
tensor-parallel ranks), the KV-cache manager and the scheduler. Each step the scheduler's decision
becomes a StepPlan of plain data (engine/step_plan.py) for the executor, whose sampled ids the
scheduler writes back onto the requests. Bad input is refused in `make_request` with one clear
InvalidRequestError and changes nothing else; a failure in a forward finishes that step's requests with
reason "error" and the engine goes on serving. EngineDeadError (a tensor-parallel rank died, or a step
failed on several ranks, which leaves them out of step) is not such a failure: it ends the engine.

`reconfigure(changes)` applies new runtime settings (RUNTIME_FIELDS) to an idle engine: the KV cache,
block pool, scheduler and CUDA graphs are rebuilt, the weights, tokenizer and compiled kernels kept, so
a tuner's trial costs a cache allocation instead of a restart. Any other setting needs a new engine.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from .config import EngineConfig, default_max_batch_size
from .errors import EngineDeadError, EngineError, InvalidRequestError, ModelLoadError, OutOfMemoryError, first_line
from .executor import check_parallel_config, make_executor
from .generation import GenerationConfig
from .kv_cache import KVCacheManager
from .models.source import ModelSource, resolve_model
from .request import FinishReason, Request, TokenLogprob
from .request_factory import RequestFactory, session_len_for
from .scheduler import Scheduler, SchedulerOutput
from .step_plan import build_step_plan

log = logging.getLogger(__name__)

# What reconfigure() changes on a loaded engine: each shapes only the KV cache, the block pool, the
# scheduler or the CUDA graphs. session_len is not here: the API process sized its request checks
# (and the model card's max_model_len) with it at start.
RUNTIME_FIELDS = frozenset({"max_batch_size", "cache_max_entry_count", "max_prefill_token_num",
                            "enable_prefix_caching", "cache_block_seq_len"})
# The JSON types each runtime field takes (bool is an int to Python: refused where a number belongs).
_RUNTIME_TYPES = {"max_batch_size": (int, type(None)), "cache_max_entry_count": (int, float),
                  "max_prefill_token_num": (int,), "enable_prefix_caching": (bool,), "cache_block_seq_len": (int,)}


class EngineBusyError(EngineError):
    """The engine has requests running or waiting, and the operation needs it idle (reconfigure)."""


class RequestOutput:
    """What one step produced for one request: new tokens and the text they complete.

    `text` is UTF-8 complete with stop words held back. For requests without stop words it is
    computed when first read, in the reader's thread, so the engine loop never pays for
    detokenization that nobody reads (offline benchmarks) or that another thread can do (server).
    """

    __slots__ = ("request_id", "token_ids", "finished", "finish_reason", "num_prompt_tokens", "num_output_tokens",
                 "num_cached_tokens", "logprobs", "error", "_text", "_request", "_text_end")

    def __init__(self, request_id: str, token_ids: list[int], text: str | None, finished: bool,
                 finish_reason: str | None, num_prompt_tokens: int, num_output_tokens: int,
                 num_cached_tokens: int = 0, logprobs: list[TokenLogprob] | None = None, error: str | None = None,
                 request: Request | None = None, text_end: int = 0):
        self.request_id, self.token_ids, self.finished = request_id, token_ids, finished
        self.finish_reason, self.num_prompt_tokens = finish_reason, num_prompt_tokens
        self.num_output_tokens, self.num_cached_tokens = num_output_tokens, num_cached_tokens
        self.logprobs, self.error = logprobs if logprobs is not None else [], error
        self._text, self._request, self._text_end = text, request, text_end

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self._request.lazy_text(self._text_end, self.finished) if self._request else ""
        return self._text

    def __repr__(self) -> str:
        return (f"RequestOutput({self.request_id!r}, token_ids={self.token_ids}, finished={self.finished}, "
                f"finish_reason={self.finish_reason!r})")


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    kv_cache_usage: float
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_steps: int
    step_time_s: float = 0.0  # wall time spent inside step() since start: the rest was waiting for work

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0


def runtime_config(config: EngineConfig, changes: dict) -> EngineConfig:
    """`config` with `changes` applied, validated; InvalidRequestError naming the first field refused.

    Only RUNTIME_FIELDS change on a loaded engine; any other EngineConfig field needs a restart.
    """
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    for name, value in changes.items():
        if name not in known:
            raise InvalidRequestError(f"{name!r} is not an engine setting (runtime settings: "
                                      f"{', '.join(sorted(RUNTIME_FIELDS))})", name)
        if name not in RUNTIME_FIELDS:
            raise InvalidRequestError(f"{name} needs a restart: only {', '.join(sorted(RUNTIME_FIELDS))} change "
                                      "on a running engine", name)
        types = _RUNTIME_TYPES[name]
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise InvalidRequestError(f"{name} must be {wanted}, got {value!r}", name)
    if "cache_max_entry_count" in changes:  # a float, as the CLI gives it (an integer > 1 is a block count)
        changes = {**changes, "cache_max_entry_count": float(changes["cache_max_entry_count"])}
    return config.replace(**changes)  # EngineConfig validates the values


def _default_batch_size(device: torch.device, memory_gb: float | None = None) -> int:
    if device.type != "cuda":
        return default_max_batch_size(None)
    total = torch.cuda.get_device_properties(device).total_memory
    if memory_gb is not None:  # an emulated smaller card picks what that card would
        total = min(total, memory_gb * 2**30)
    return default_max_batch_size(total)


class LLMEngine:
    def __init__(self, model: str | ModelSource | None = None, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self._init_source(model)
        self._init_tokenizer()
        self._init_runner()
        try:
            self._init_runtime(self.config)
        except BaseException:
            self.executor.shutdown()  # tensor-parallel workers must not outlive an engine that never started
            raise
        self._init_state()

    # -- initialisation --------------------------------------------------------------------------
    def _init_source(self, model) -> None:
        self.source = model if isinstance(model, ModelSource) else resolve_model(model)
        check_parallel_config(self.source, self.config)  # a tp the model cannot take: refused before loading
        self.session_len = session_len_for(self.source, self.config.session_len)

    def _init_state(self) -> None:
        self._in_flight = None  # the launched step whose tokens the next step() collects
        # Overlap scheduling pays where launches are asynchronous (CUDA). overlap="off" turns it off,
        # "on" forces it (tests exercise the logic on CPU, where it is correct but gains nothing).
        overlap = self.config.overlap
        self._overlap = overlap == "on" or (overlap == "auto" and self.runner.device.type == "cuda")
        self._requests: dict[str, Request] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.step_time_s = 0.0

    def _init_tokenizer(self) -> None:
        try:
            self.tokenizer = self.source.load_tokenizer()
        except Exception as e:  # tokenizers raise many types for a broken file
            raise ModelLoadError(f"cannot load the tokenizer of {self.source.name}: {e}") from None

    def _init_runner(self) -> None:
        """The weights: loaded once per engine, on every rank (the runtime part is _init_runtime's)."""
        self.executor = make_executor(self.config, self.source, self.session_len)
        self.runner = self.executor.runner  # rank 0's: device, dtype, weights and cache facts
        self.vocab_size = self.runner.vocab_size
        self.requests = RequestFactory.for_model(self.source, self.tokenizer, self.session_len)
        self.eos_token_ids = self.requests.eos_token_ids

    def _init_runtime(self, config: EngineConfig) -> None:
        """What the runtime settings shape: KV-cache tensors, buffers and graphs (runner), block pool, scheduler.

        The counters of the pool and the scheduler carry over from the ones replaced, so the server's
        Prometheus counters never go down while its process lives.
        """
        max_batch = config.max_batch_size or _default_batch_size(self.runner.device, config.gpu_memory_gb)
        self.executor.allocate(config, max_batch)
        old_kv, old_scheduler = getattr(self, "kv", None), getattr(self, "scheduler", None)
        self.kv = KVCacheManager(self.runner.num_blocks, config.cache_block_seq_len, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, max_batch, config.max_prefill_token_num)
        if old_kv is not None:
            self.kv.stats = old_kv.stats
            self.scheduler.stats = old_scheduler.stats
        self.config = config

    # -- runtime settings ------------------------------------------------------------------------
    def reconfigure(self, changes: dict) -> EngineStats:
        """Apply new runtime settings (RUNTIME_FIELDS) to the idle engine; returns the new stats.

        The KV cache, block pool (so the prefix cache too), scheduler and CUDA graphs are rebuilt for
        `self.config.replace(**changes)`; weights, tokenizer and compiled kernels stay. An empty
        `changes` rebuilds the same settings: a clean pool and prefix cache. Refused, with nothing
        changed: a field outside RUNTIME_FIELDS or a bad value (InvalidRequestError naming it),
        requests running or waiting (EngineBusyError). If the new settings do not fit (OutOfMemoryError
        and the like) the previous ones are restored and the error raised; if even they no longer fit,
        RuntimeError: the engine has no KV cache and must be restarted.
        """
        new = runtime_config(self.config, dict(changes))
        if self.scheduler.num_unfinished:
            raise EngineBusyError(
                f"cannot reconfigure while {len(self.scheduler.running)} request(s) run and "
                f"{len(self.scheduler.waiting)} wait: reconfigure an idle engine")
        if self._in_flight is not None:  # the last step's requests all finished: wait for it, drop its tokens
            launched, self._in_flight = self._in_flight, None
            self._update(*launched)
        old = self.config
        started = time.perf_counter()
        try:
            self._init_runtime(new)  # the runner frees the old cache and graphs before allocating new ones
        except EngineDeadError:
            raise  # a tensor-parallel rank died: nothing to restore
        except Exception as e:
            log.warning("reconfigure to %s failed (%s); restoring the previous settings", new.to_flags(), e)
            try:
                self._init_runtime(old)
            except Exception as again:
                # Not an EngineError: callers treat this one as the engine's end, not as a refusal.
                raise RuntimeError(f"the engine could not restore its previous runtime settings ({again}) after "
                                   f"failing to apply new ones ({e}): it has no KV cache and must be "
                                   "restarted") from again
            if isinstance(e, EngineError):  # already says what would fit
                raise
            # torch's own out-of-memory (graph capture) and the like: the previous settings serve on,
            # so this is a refusal (an EngineError), not the engine's end.
            kind = OutOfMemoryError if isinstance(e, torch.OutOfMemoryError) else EngineError
            raise kind(f"the new settings failed: {type(e).__name__}: {first_line(e)}") from e
        log.info("reconfigured in %.2f s: %s (%d KV blocks)", time.perf_counter() - started,
                 " ".join(new.to_flags()) or "defaults", self.runner.num_blocks)
        return self.stats()

    # -- requests --------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: str | list[int]) -> list[int]:
        return self.requests.tokenize_prompt(prompt)

    def make_request(self, prompt: str | list[int], gen: GenerationConfig | None = None,
                     request_id: str | None = None) -> Request:
        """Validate and tokenize (RequestFactory); touches no engine state, so any thread may call it."""
        return self.requests.make_request(prompt, gen, request_id)

    def add(self, request: Request) -> None:
        if request.request_id in self._requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in use", "request_id")
        self._requests[request.request_id] = request
        self.prompt_tokens_total += request.num_prompt_tokens
        self.scheduler.add(request)

    def add_request(self, prompt: str | list[int], gen: GenerationConfig | None = None,
                    request_id: str | None = None) -> str:
        request = self.make_request(prompt, gen, request_id)
        self.add(request)
        return request.request_id

    def abort(self, request_id: str) -> bool:
        request = self._requests.pop(str(request_id), None)
        if request is None:
            return False
        self.scheduler.abort(request)
        return True

    def abort_all(self) -> list[str]:
        """Abort every request (after a failure outside the forward); returns their ids."""
        ids = list(self._requests)
        for rid in ids:
            self.abort(rid)
        return ids

    def has_unfinished(self) -> bool:
        # Every unfinished request is running or waiting; a step still in flight whose requests have
        # all finished (aborted, or stopped by the step before it) holds nothing worth waiting for.
        return self.scheduler.num_unfinished > 0

    # -- the step --------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """schedule -> launch on the device -> update with the previous launch's tokens.

        On CUDA the next step is scheduled and launched before the host waits for the one in flight
        (overlap), so Python's bookkeeping runs while the GPU computes. Requests whose sampling needs
        the exact token history (penalties) turn the overlap off while they run.
        """
        started = time.perf_counter()
        outputs: list[RequestOutput] = []
        previous, self._in_flight = self._in_flight, None
        if previous is not None and not self._can_overlap():
            outputs += self._update(*previous)
            previous = None
        plan = self.scheduler.schedule()
        if not plan.is_empty:
            try:
                self._in_flight = (plan, self.executor.launch(build_step_plan(plan)))
            except EngineDeadError:
                raise  # not this step's failure: the engine is over
            except Exception as e:  # a failed forward must not take the engine down
                outputs += self._fail(plan, e)
        if previous is not None:
            outputs += self._update(*previous)
        if self._in_flight is not None and not self._overlap:
            current, self._in_flight = self._in_flight, None
            outputs += self._update(*current)
        if self.config.debug_invariants:  # after every update: finished requests have freed their blocks
            self.scheduler.check_invariants()
        if self.config.debug_step_delay_ms:  # a known slowdown, for testing performance gates
            time.sleep(self.config.debug_step_delay_ms / 1000)
        self.step_time_s += time.perf_counter() - started
        return outputs

    def _can_overlap(self) -> bool:
        return self._overlap and not any(r.gen.uses_penalties for r in self.scheduler.running)

    def _update(self, plan: SchedulerOutput, step) -> list[RequestOutput]:
        """Collect a launched step (the executor's InFlightStep for `plan`) and write its tokens back."""
        try:
            result = self.executor.collect(step)
        except EngineDeadError:
            raise
        except Exception as e:
            return self._fail(plan, e)
        touched = self.scheduler.update(plan, result.tokens, self._check_stop)
        self._attach_logprobs(plan, result.tokens, result.logprobs)
        for item, scores in zip(plan.scheduled, result.prompt_logprobs or ()):
            if scores is not None:
                first, values = scores
                item.request.prompt_logprobs[first:first + len(values)] = values
        return [self._output(r, index) for r, index in touched]

    def _check_stop(self, request: Request, token: int, index: int) -> FinishReason | None:
        self.generation_tokens_total += 1
        if token in request.stop_token_ids:
            request.stopped_by_token = True
            if request.detokenize_in_engine:
                request.pending_text += request.detokenizer.flush()
            return FinishReason.STOP
        if request.detokenize_in_engine:
            delta = request.detokenizer.step([token])
            request.detok_pos = index + 1
            request.pending_text += delta.text
            if delta.stopped:
                return FinishReason.STOP
        if index + 1 >= request.max_tokens:
            if request.detokenize_in_engine:
                request.pending_text += request.detokenizer.flush()
            return FinishReason.LENGTH
        return None

    @staticmethod
    def _attach_logprobs(plan: SchedulerOutput, tokens: list, logprobs: list) -> None:
        for item, token, lp in zip(plan.scheduled, tokens, logprobs):
            if lp is not None:
                item.request.pending_logprobs.append(TokenLogprob(token, lp[0], dict(lp[1])))

    def _output(self, request: Request, index: int) -> RequestOutput:
        """The output for the token at `index` (later tokens may already be in flight)."""
        eager = request.detokenize_in_engine
        out = RequestOutput(
            request.request_id, [request.token_ids[index]], request.pending_text if eager else None,
            request.is_finished, request.finish_reason.value if request.finish_reason else None,
            request.num_prompt_tokens, index + 1 - request.num_prompt_tokens, request.num_cached_tokens,
            request.pending_logprobs, request.error, request,
            text_end=index + 1 - request.stopped_by_token)
        request.pending_text, request.pending_logprobs = "", []
        if request.is_finished:
            self._requests.pop(request.request_id, None)
        return out

    def _fail(self, plan: SchedulerOutput, error: Exception) -> list[RequestOutput]:
        log.exception("step failed; finishing its requests with an error")
        # Blocks registered for this step's chunks were never written: forget them.
        self.kv.reset_prefix_cache()
        outputs = []
        for item in plan.scheduled:
            request = item.request
            if request.is_finished:
                continue
            self.scheduler.abort(request, FinishReason.ERROR, f"engine error: {error}")
            outputs.append(RequestOutput(request.request_id, [], "", True, FinishReason.ERROR.value,
                                         request.num_prompt_tokens, request.num_output_tokens, error=request.error))
            self._requests.pop(request.request_id, None)
        return outputs

    # -- lifetime ----------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Raise EngineDeadError when a tensor-parallel worker has died (an idle engine's loop asks)."""
        self.executor.check_health()

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers and leave their process group (nothing at tp 1); idempotent.
        The engine cannot step afterwards."""
        self.executor.shutdown()

    # -- introspection ---------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_blocks=self.kv.num_blocks, num_free_blocks=self.kv.num_free_blocks,
            kv_cache_usage=self.kv.usage, num_preemptions=self.scheduler.stats.num_preemptions,
            prefix_cache_queries=self.kv.stats.queries, prefix_cache_hits=self.kv.stats.hits,
            prompt_tokens_total=self.prompt_tokens_total, generation_tokens_total=self.generation_tokens_total,
            num_steps=self.scheduler.stats.num_steps, step_time_s=self.step_time_s)

    def generate(self, prompts: list[str | list[int]], gen: GenerationConfig | list[GenerationConfig] | None = None
                 ) -> list[Request]:
        """Run prompts to completion (offline use and benchmarks); returns finished requests in order."""
        gens = gen if isinstance(gen, list) else [gen] * len(prompts)
        requests = [self.make_request(p, g) for p, g in zip(prompts, gens)]
        for r in requests:
            self.add(r)
        while self.has_unfinished():
            self.step()
        return requests
