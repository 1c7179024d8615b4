"""ProcessEngine: the LLMEngine in its own process, behind the AsyncEngine front (the server's backend).

Why a process: streaming tokens to 64 clients costs the server's event loop tens of microseconds
per token event; in one process that work holds the GIL the engine loop needs to schedule and launch
its next step, and the GPU waits. Measured on an H100 with the engine in a thread: the HTTP path kept
0.84 of the offline engine's output tok/s at 64 streams. vLLM and SGLang split the same way.

Protocol, over two one-way pipes (multiprocessing connections, pickled tuples):
  server -> engine: ("add", RequestSpec) | ("abort", request_id) | ("reconfigure", token, changes)
                    | ("shutdown",)
  engine -> server: ("ready", EngineStats) | ("failed", error class name, one-line message)
                    | ("step", [packed output, ...], EngineStats) | ("stats", EngineStats)
                    | ("reject", request_id, error class name, message, param)
                    | ("reconfigured", token, EngineConfig, EngineStats)
                    | ("not_reconfigured", token, error class name, message, param)
                    | ("fail_all", message) | ("dead", reason) | ("stopped",)
A reconfigure runs between steps, after every command sent before it; its token pairs the answer with
the caller waiting for it. An engine that cannot even restore its previous settings exits (the
server then exits 1, and a supervisor restarts it).
The server keeps its own copy of each Request (built from the same RequestSpec) and appends the
streamed token ids to it, so the text of requests without stop words is detokenized in the server's
process, when a stream reads it; requests with stop words are detokenized by the engine, which
needs the text to stop. The engine process ignores SIGINT (the server shuts it down in order) and
exits when its command pipe closes, so it never outlives the server. With --tp N it is tensor-parallel
rank 0 and the parent of the other ranks' workers (engine/executor/), which die with it; a worker's
death ends the engine process with ("dead", reason), so the server fails what is in flight and exits.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import multiprocessing as mp
import signal
import sys
import threading
from multiprocessing.connection import Connection, wait

from . import errors
from .async_engine import AsyncEngine, running_future
from .config import EngineConfig
from .engine import EngineBusyError, EngineStats, RequestOutput
from .errors import EngineDeadError, EngineError, InvalidRequestError
from .kv_cache import KVCacheInvariantError
from .models.source import ModelSource
from .request_factory import RequestFactory, RequestSpec, session_len_for

log = logging.getLogger(__name__)


class ProcessEngine(AsyncEngine):
    """Start with ProcessEngine.start(source, config); raises the engine's start-up error as EngineError."""

    def __init__(self, requests: RequestFactory, source: ModelSource, config: EngineConfig, process,
                 commands: Connection, events: Connection, stats: EngineStats):
        super().__init__(requests, source, config)
        self._process = process
        self._commands = commands
        self._events = events
        self._stats = stats
        self._send_lock = threading.Lock()  # several event loops may send (tests run three servers)
        self._mirrors: dict = {}  # request_id -> this process's Request copy (token ids + detokenizer)
        self._reconfigures: dict[int, concurrent.futures.Future] = {}  # token -> the caller's future
        self._tokens = itertools.count()
        self._reader = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, source: ModelSource, config: EngineConfig, log_level: str = "warning") -> ProcessEngine:
        """Spawn the engine process and wait until its model is loaded (or it says why not)."""
        from .executor import check_parallel_config

        check_parallel_config(source, config)  # a tp the model cannot take: refused before anything loads
        requests = RequestFactory.for_model(source, source.load_tokenizer(),
                                            session_len_for(source, config.session_len))
        ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or threads
        command_reader, command_writer = ctx.Pipe(duplex=False)
        event_reader, event_writer = ctx.Pipe(duplex=False)
        process = ctx.Process(target=engine_main, args=(source, config, command_reader, event_writer, log_level),
                              name="opsctl-engine", daemon=True)
        process.start()
        command_reader.close()  # the child's ends: closing ours lets either side see EOF when the other exits
        event_writer.close()
        message = _wait_ready(process, event_reader)
        if message[0] != "ready":
            process.join(10)
            _, kind, text = message
            raise getattr(errors, kind, EngineError)(text)
        return cls(requests, source, config, process, command_writer, event_reader, message[1])

    # -- AsyncEngine hooks ------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """The engine's statistics as of its last step (or its last command, when idle)."""
        return self._stats

    def _submit(self, spec: RequestSpec) -> None:
        self._mirrors[spec.request_id] = self.requests.build(spec)
        self._send(("add", spec))

    def _abort(self, request_id: str) -> None:
        self._mirrors.pop(request_id, None)
        self._send(("abort", request_id))

    def _reconfigure(self, changes: dict) -> concurrent.futures.Future:
        future = running_future()
        token = next(self._tokens)
        self._reconfigures[token] = future
        # Registered before the check: a death after it fails the future in the reader thread, one
        # before it here (either way exactly once: whoever pops the token answers it).
        if self.dead_reason is not None:
            self._fail_reconfigures(self.dead_reason)
        else:
            self._send(("reconfigure", token, changes))
        return future

    def _fail_reconfigures(self, reason: str) -> None:
        for token in list(self._reconfigures):
            future = self._reconfigures.pop(token, None)
            if future is not None:
                future.set_exception(EngineDeadError(reason))

    async def _stop(self) -> None:
        self._send(("shutdown",))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._process.join, 10.0)
        if self._process.is_alive():
            log.warning("the engine process did not stop in 10 s; terminating it")
            self._process.terminate()
            await loop.run_in_executor(None, self._process.join, 5.0)
        await loop.run_in_executor(None, self._reader.join, 5.0)
        self._commands.close()

    def _send(self, command) -> None:
        if self.dead_reason is not None:
            return
        try:
            with self._send_lock:
                self._commands.send(command)
        except (OSError, ValueError):  # the process is gone; the reader reports why
            pass

    # -- events from the engine process (reader thread) ------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = self._events.recv()
            except (EOFError, OSError):
                if self._accepting:
                    self._on_death()
                return
            kind = message[0]
            if kind == "step":
                self._stats = message[2]
                self._deliver_step([self._unpack(item) for item in message[1]])
            elif kind == "stats":
                self._stats = message[1]
            elif kind == "reject":
                _, rid, error_kind, text, param = message
                self._mirrors.pop(rid, None)
                error_cls = getattr(errors, error_kind, EngineError)
                self._deliver(rid, InvalidRequestError(text, param) if error_cls is InvalidRequestError
                              else error_cls(text))
            elif kind in ("reconfigured", "not_reconfigured"):
                self._on_reconfigured(message)
            elif kind == "dead":  # a tensor-parallel worker died: the engine process exits after this
                self._on_death(message[1])
                return
            elif kind == "fail_all":  # a step failed; the engine aborted everything and goes on
                self._mirrors.clear()
                for rid in list(self._streams):
                    self._deliver(rid, EngineError(message[1]))
            elif kind == "stopped":
                self.dead_reason = "the engine has stopped"
                self._fail_reconfigures(self.dead_reason)
                return

    def _on_reconfigured(self, message) -> None:
        future = self._reconfigures.pop(message[1], None)
        if message[0] == "reconfigured":
            _, _, config, stats = message
            self._stats = stats  # before the caller wakes: stats() already shows the new pool
            if future is not None:
                future.set_result((config, stats))
            return
        _, _, error_kind, text, param = message
        if future is not None:
            future.set_exception(_engine_error(error_kind, text, param))

    def _on_death(self, reason: str | None = None) -> None:
        """The engine process went away unasked (or said why it must: `reason`): reap it (no zombie), fail
        every stream, tell on_dead."""
        self._process.join(5.0)
        code = self._process.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        reason = reason or f"the engine process {how}"
        log.error("%s; failing %d request(s) in flight", reason, len(self._streams))
        # What the engine last reported is no longer true: nothing runs or waits in a dead engine.
        self._stats = dataclasses.replace(self._stats, num_running=0, num_waiting=0,
                                          num_free_blocks=self._stats.num_blocks, kv_cache_usage=0.0)
        self._mirrors.clear()
        self._fail_all(reason)
        self._fail_reconfigures(reason)

    def _unpack(self, item) -> RequestOutput:
        rid, token_ids, text, finished, reason, n_prompt, n_output, n_cached, logprobs, error, text_end = item
        mirror = self._mirrors.pop(rid, None) if finished else self._mirrors.get(rid)
        if mirror is not None:
            mirror.token_ids.extend(token_ids)
        return RequestOutput(rid, token_ids, text, finished, reason, n_prompt, n_output, n_cached, logprobs, error,
                             request=mirror if text is None else None, text_end=text_end)


def _engine_error(kind: str, text: str, param: str | None) -> EngineError:
    """An error the engine process raised, rebuilt from its class name (EngineError for any other)."""
    if kind == "EngineBusyError":
        return EngineBusyError(text)
    return errors.error_from_name(kind, text, param)


def _wait_ready(process, events: Connection):
    """The process's first message; a process that dies first is reported with its exit code."""
    while not events.poll(0.5):
        if not process.is_alive():
            break
    else:
        try:
            return events.recv()
        except EOFError:
            pass
    process.join(10)
    return ("failed", "EngineError", f"the engine process exited with code {process.exitcode} while loading "
                                     "the model (run with --log-level debug to see why)")


# -- the engine process -----------------------------------------------------------------------------
def engine_main(source: ModelSource, config: EngineConfig, commands: Connection, events: Connection,
                log_level: str) -> None:
    """Entry point of the engine process: load the model, then serve commands until shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As the server logs: to stdout through the same flood limit, so stderr keeps only the one-line
    # start-up error the server prints.
    from .logs import configure_logging

    configure_logging(log_level)
    from .engine import LLMEngine

    if config.tp > 1:
        # The tensor-parallel workers are this process's children, and multiprocessing refuses children to
        # a daemonic process. It is daemonic only so that the server's exit terminates it; its workers die
        # with it whatever ends it (PR_SET_PDEATHSIG, engine/executor/worker.py).
        mp.current_process().daemon = False
    try:
        engine = LLMEngine(source, config)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line for the server to print
        kind = type(e).__name__ if isinstance(e, EngineError) and hasattr(errors, type(e).__name__) else "EngineError"
        events.send(("failed", kind, errors.describe_load_failure(source.name, e)))
        return
    events.send(("ready", engine.stats()))
    try:
        code = _EngineLoop(engine, commands, events).run()
    finally:
        engine.shutdown()
    sys.exit(code)


class _EngineLoop:
    def __init__(self, engine, commands: Connection, events: Connection):
        self.engine = engine
        self.commands = commands
        self.events = events
        self.changed = False  # a command changed the stats since they were last sent

    def run(self) -> int:
        """Serve commands until shutdown (0) or the engine's death (1: a tensor-parallel worker died)."""
        # Idle, the loop also wakes when a tensor-parallel worker ends, to report it rather than wait for
        # the next request to find out.
        workers = self.engine.executor.sentinels
        try:
            while True:
                busy = self.engine.has_unfinished()
                # Idle: block until a command comes (a closed pipe counts as one: recv raises EOFError).
                if not busy:
                    wait([self.commands, *workers])
                    self.engine.check_health()
                if self.commands.poll(0) and not self._drain():
                    break
                if self.engine.has_unfinished():
                    self._step()
                elif self.changed:
                    self.events.send(("stats", self.engine.stats()))
                    self.changed = False
        except (EOFError, BrokenPipeError):
            return 0  # the server went away
        except EngineDeadError as e:  # the executor logged why; the server logs it again as it exits
            self.engine.abort_all()
            try:
                self.events.send(("dead", str(e)))
            except OSError:  # the server is gone too
                pass
            return 1
        self.events.send(("stopped",))
        return 0

    def _drain(self) -> bool:
        """Apply every queued command; False on shutdown."""
        while self.commands.poll(0):
            command = self.commands.recv()
            kind = command[0]
            if kind == "add":
                spec = command[1]
                try:
                    self.engine.add(self.engine.requests.build(spec))
                except EngineError as e:
                    self.events.send(("reject", spec.request_id, type(e).__name__, str(e), getattr(e, "param", None)))
            elif kind == "abort":
                self.engine.abort(command[1])
            elif kind == "reconfigure":
                self._reconfigure(command[1], command[2])
            elif kind == "shutdown":
                return False
            self.changed = True
        return True

    def _reconfigure(self, token: int, changes: dict) -> None:
        try:
            stats = self.engine.reconfigure(changes)
        except EngineError as e:  # refused, or did not fit: the engine kept its previous settings
            self.events.send(("not_reconfigured", token, type(e).__name__, str(e), getattr(e, "param", None)))
        except Exception:
            # Not even the previous settings fit: no KV cache is left to serve with. Exit, so the
            # server fails what waits with engine_dead and exits 1 for a supervisor to restart it.
            log.exception("reconfigure left the engine without a KV cache: stopping the engine")
            raise
        else:
            self.events.send(("reconfigured", token, self.engine.config, stats))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except EngineDeadError:
            raise  # the engine is over: run() reports it
        except KVCacheInvariantError:
            # --debug-invariants found the block pool corrupt: serving on would hand one request's KV
            # to another. Die with the first violation in the log; the server then fails what is in
            # flight with engine_dead and exits non-zero.
            log.exception("KV-cache invariant violated: stopping the engine")
            raise
        except Exception as e:  # a bug outside the forward: fail everyone rather than hang them
            log.exception("engine step failed")
            self.engine.abort_all()
            self.events.send(("fail_all", f"engine step failed: {e}"))
            return
        self.events.send(("step", [_pack(out) for out in outputs], self.engine.stats()))
        self.changed = False


def _pack(out: RequestOutput) -> tuple:
    """A RequestOutput as plain data; text stays None where the server's copy detokenizes it."""
    return (out.request_id, out.token_ids, out._text, out.finished, out.finish_reason, out.num_prompt_tokens,
            out.num_output_tokens, out.num_cached_tokens, out.logprobs or None, out.error, out._text_end)
