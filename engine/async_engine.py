"""AsyncEngine: the engine behind asyncio callers (the API server), stepping outside the event loop.

Callers validate and tokenize in their own thread (errors surface at once, RequestFactory), then hand
the request to the engine; outputs come back to each caller's asyncio queue, one wake-up per event
loop per engine step. Two backends share that front:
- ThreadedEngine (here): an LLMEngine stepping in a background thread of this process. Simple, and
  what tests and the offline tools use; but the engine loop and the server share one GIL.
- ProcessEngine (engine_process.py): the LLMEngine in its own process, which the server uses, so
  streaming responses to many clients never delays the engine's next step.
`reconfigure(changes)` applies new runtime settings (LLMEngine.reconfigure) through the same command
channel as requests, so it runs between engine steps, after every command sent before it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator

from .engine import EngineBusyError, EngineStats, LLMEngine, RequestOutput
from .errors import EngineDeadError, EngineError, InvalidRequestError
from .generation import GenerationConfig
from .request_factory import RequestFactory, RequestSpec

log = logging.getLogger(__name__)


class AsyncEngine:
    """The asyncio front: one stream per request. Backends implement _submit, _abort, _reconfigure, _stop, stats."""

    def __init__(self, requests: RequestFactory, source, config):
        self.requests = requests
        self.tokenizer = requests.tokenizer
        self.session_len = requests.session_len
        self.vocab_size = requests.vocab_size
        self.source = source
        self.config = config
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._accepting = True
        self.dead_reason: str | None = None  # set when the engine stopped by itself
        # Called once, from the backend's thread, when the engine dies (the server exits on it).
        self.on_dead = None

    # -- backend hooks ----------------------------------------------------------------------------
    def _submit(self, spec: RequestSpec) -> None:
        raise NotImplementedError

    def _abort(self, request_id: str) -> None:
        raise NotImplementedError

    def _reconfigure(self, changes: dict) -> concurrent.futures.Future:
        """Have the engine apply `changes`; the future resolves to (new EngineConfig, new EngineStats)."""
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def stats(self) -> EngineStats:
        raise NotImplementedError

    # -- caller side (any thread with an asyncio loop) --------------------------------------------
    @property
    def accepting(self) -> bool:
        """False once shutdown() has begun or the engine died."""
        return self._accepting and self.dead_reason is None

    @property
    def num_active(self) -> int:
        return len(self._streams)

    async def generate(self, prompt: str | list[int], gen: GenerationConfig | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; leaving the iteration early aborts the request."""
        if not self.accepting:
            if self.dead_reason is not None:
                raise EngineDeadError(self.dead_reason)
            raise EngineDeadError("the engine is shutting down and accepts no new requests", "shutting_down")
        spec = self.requests.make_spec(prompt, gen, request_id)
        if spec.request_id in self._streams:
            raise InvalidRequestError(f"request id {spec.request_id!r} is already in use", "request_id")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[spec.request_id] = (asyncio.get_running_loop(), stream)
        self._submit(spec)
        finished = False
        pending = None  # an error met while merging, raised after the merged output is handed over
        try:
            while True:
                out = pending if pending is not None else await stream.get()
                pending = None
                if isinstance(out, BaseException):
                    raise out
                # A consumer that fell behind (a busy event loop, a slow client) gets what piled up
                # as one output, as vLLM's output collector does: its work per engine step stays
                # bounded instead of growing with the backlog, so it catches up.
                while not out.finished and not stream.empty():
                    later = stream.get_nowait()
                    if isinstance(later, BaseException):
                        pending = later
                        break
                    out = merge_outputs(out, later)
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._streams.pop(spec.request_id, None)
            if not finished:
                self._abort(spec.request_id)

    def abort(self, request_id: str) -> None:
        self._abort(request_id)

    async def reconfigure(self, changes: dict) -> EngineStats:
        """Apply new runtime settings (engine.RUNTIME_FIELDS) to the idle engine; returns its new stats.

        Refused with nothing changed: requests in flight (EngineBusyError: streams of this front, or
        requests the engine still holds), a field that needs a restart or a bad value
        (InvalidRequestError), settings that do not fit (OutOfMemoryError: the engine keeps the
        previous ones). `self.config` and `stats()` show the new settings once this returns.
        """
        if not self.accepting:
            if self.dead_reason is not None:
                raise EngineDeadError(self.dead_reason)
            raise EngineDeadError("the engine is shutting down", "shutting_down")
        if self._streams:  # answered here, without a round trip to a busy engine
            raise EngineBusyError(f"cannot reconfigure while {len(self._streams)} request(s) are in flight: "
                                  "reconfigure an idle engine")
        config, stats = await asyncio.wrap_future(self._reconfigure(dict(changes)))
        self.config = config
        return stats

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (abort what is left after `timeout`), stop."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._streams and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.05)
        for rid in list(self._streams):
            self._abort(rid)
            self._deliver(rid, EngineDeadError("the server is shutting down", "shutting_down"))
        await self._stop()

    # -- delivery (from the backend's thread) -----------------------------------------------------
    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)

    def _deliver_step(self, outputs) -> None:
        """Hand a step's outputs over with one wake-up per event loop, not one per request."""
        by_loop: dict = {}
        for out in outputs:
            target = self._streams.get(out.request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], out))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, reason: str) -> None:
        """The engine is gone: every open stream gets EngineDeadError ("engine_dead"), then on_dead is told."""
        self.dead_reason = reason
        for rid in list(self._streams):
            self._deliver(rid, EngineDeadError(reason))
        if self.on_dead is not None:
            self.on_dead(reason)


def merge_outputs(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """Two consecutive outputs of one request as one (the later one's state, both ones' tokens and text)."""
    if first._text is None and later._text is None:
        text = None  # lazy: the later output's text covers every token not read yet (Request.lazy_text)
    else:
        text = first.text + later.text
    return RequestOutput(later.request_id, first.token_ids + later.token_ids, text, later.finished,
                         later.finish_reason, later.num_prompt_tokens, later.num_output_tokens,
                         later.num_cached_tokens, first.logprobs + later.logprobs, later.error,
                         request=later._request, text_end=later._text_end)


def running_future() -> concurrent.futures.Future:
    """A future for a command already on its way to the engine: marked running, so a caller that gives up
    waiting (its asyncio side cancelled) cannot cancel it under the thread that sets its result."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


def _put_all(items) -> None:
    for stream, out in items:
        stream.put_nowait(out)


class ThreadedEngine(AsyncEngine):
    """An LLMEngine stepping in a background thread; only that thread touches the scheduler."""

    def __init__(self, engine: LLMEngine):
        # (A 0.5 ms GIL switch interval, to hand the GIL back to this thread sooner after GPU waits,
        # measured worse on the H100 machine: HTTP/offline 0.70 against 0.83 with CPython's 5 ms.
        # ProcessEngine removes the contention instead.)
        super().__init__(engine.requests, engine.source, engine.config)
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def _submit(self, spec: RequestSpec) -> None:
        self._send(("add", self.engine.requests.build(spec)))

    def _abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _reconfigure(self, changes: dict) -> concurrent.futures.Future:
        future = running_future()
        self._send(("reconfigure", (changes, future)))
        return future

    async def _stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
        self._fail_unapplied()
        if not self._thread.is_alive():
            self.engine.shutdown()  # its tensor-parallel workers, if any

    def _fail_unapplied(self) -> None:
        """Reconfigures still queued when the loop stopped are never applied: their callers must not wait forever."""
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "reconfigure":
                payload[1].set_exception(EngineDeadError("the engine has stopped", "shutting_down"))

    def _send(self, command) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    # -- engine thread ----------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                if payload.request_id in self._streams:
                    try:
                        self.engine.add(payload)
                    except EngineError as e:
                        self._deliver(payload.request_id, e)
            elif kind == "reconfigure":
                self._apply_reconfigure(*payload)
            else:
                self.engine.abort(payload)

    def _apply_reconfigure(self, changes: dict, future: concurrent.futures.Future) -> None:
        try:
            stats = self.engine.reconfigure(changes)
        except EngineError as e:  # refused, or did not fit: the engine kept its previous settings
            future.set_exception(e)
        except Exception as e:  # noqa: BLE001 - not even the previous settings fit: the engine has no KV cache
            log.exception("reconfigure left the engine without a KV cache")
            future.set_exception(e)
            self._stopping = True
            self._fail_all(f"the engine failed while reconfiguring: {e}")
        else:
            future.set_result((self.engine.config, stats))

    def _run(self) -> None:
        try:
            self._loop()
        except EngineDeadError as e:  # a tensor-parallel worker died: nothing more can run
            log.error("%s: stopping the engine", e)
            self._stopping = True
            self.engine.abort_all()
            self._fail_all(str(e))
        self._fail_unapplied()

    def _loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            self._drain_inbox()
            if not self.engine.has_unfinished():
                self._wakeup.wait(timeout=1.0)
                self.engine.check_health()  # an idle engine still notices a dead tensor-parallel worker
                continue
            try:
                outputs = self.engine.step()
            except EngineDeadError:
                raise
            except Exception as e:  # a bug outside the forward: fail everyone rather than hang them
                log.exception("engine step failed")
                for rid in list(self._streams):
                    self.engine.abort(rid)
                    self._deliver(rid, EngineError(f"engine step failed: {e}"))
                continue
            self._deliver_step(outputs)
