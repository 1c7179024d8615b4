"""MultiprocExecutor: tensor parallelism, rank 0 in the engine's process and a worker process per other rank.

Why rank 0 is the engine's own process: the scheduler and rank 0's shard then share a process, so a
step's plan goes straight into rank 0's forward while one broadcast hands it to the workers, and the
sampled ids never cross a process boundary on their way to the scheduler. The price: the process holds
a GPU and the process group, so one tensor-parallel engine per process (distributed.init refuses a
second).

Each step: rank 0 broadcasts the plan without its sampling part (distributed.send_command), then every
rank runs the same forward (their all-reduces pair up), rank 0 gathers the logits, samples, and
broadcasts the sampled ids. Workers are spawned (never forked: CUDA and threads), one per local rank,
daemonic and with PR_SET_PDEATHSIG, so they end with this process however it ends.

Death: a worker that dies is seen three ways, so the engine never hangs on it: gloo fails the
collective whose peer is gone at once; a watchdog thread waits on the workers' sentinels and, on NCCL
(which does not notice a dead peer), aborts the process group so a blocked collective fails; an idle
engine loop waits on the same sentinels (`sentinels`, `check_health`). Any failure inside a step or an
allocation that is not an agreed refusal ends the engine with EngineDeadError naming the rank and why:
its ranks are out of step and cannot go on. The remaining workers are stopped before it is raised.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import weakref
from multiprocessing.connection import wait

import torch

from .. import distributed
from ..config import EngineConfig
from ..errors import EngineDeadError, EngineError, InvalidRequestError, error_from_name, first_line
from ..runner.model_runner import InFlightStep, ModelRunner, pick_device
from ..step_plan import StepPlan
from .base import Executor
from .worker import WorkerArgs, worker_main

log = logging.getLogger(__name__)

_JOIN_S = 5.0  # a stopped worker gets this long to leave before it is terminated, then killed
_REAP_S = 10.0  # after a failed collective, how long a dying worker gets to be reaped


class _Worker:
    def __init__(self, rank: int, process, pipe):
        self.rank, self.process, self.pipe = rank, process, pipe
        self.message = None  # its last word on the pipe: ("joining",) or ("failed", kind, text)

    def read(self) -> None:
        try:
            while self.pipe.poll(0):
                self.message = self.pipe.recv()
        except (EOFError, OSError):
            pass

    def describe_end(self) -> str:
        """Why this worker is gone, in words."""
        self.read()
        if self.message and self.message[0] == "failed":
            return f"tensor-parallel rank {self.rank} failed: {self.message[2]}"
        who, code = f"tensor-parallel rank {self.rank} (pid {self.process.pid})", self.process.exitcode
        if code is None:
            return f"{who} stopped answering"
        if code < 0:
            try:
                return f"{who} was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"{who} was killed by signal {-code}"
        return f"{who} exited with code {code}"


def _stop_processes(processes: list) -> None:
    """Terminate, then kill, whatever is still running (the finalizer's and shutdown's last resort)."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(_JOIN_S)
        if p.is_alive():
            p.kill()
            p.join(_JOIN_S)


class MultiprocExecutor(Executor):
    def __init__(self, config: EngineConfig, source, session_len: int, log_level: str | None = None):
        self.meet = distributed.rendezvous(config)
        if self.meet.local_ranks[0] != 0:
            raise InvalidRequestError(
                f"this process is tensor-parallel rank {self.meet.local_ranks[0]}: the engine runs on rank 0 "
                "(node 0); start the other ranks with `opsctl serve` (README: Tensor parallelism)", "node_rank")
        device = pick_device(config.device)  # on CUDA: checks that every local rank has a GPU
        if len(self.meet.local_ranks) > 1:
            pick_device(config.device, len(self.meet.local_ranks) - 1)
        self.workers: list[_Worker] = []
        self._death: str | None = None  # why a worker ended, as the watchdog (which alone reaps them) found
        self._death_known = threading.Event()
        self._stopping = False
        self._stopped = False
        self._started = False  # the first allocation went through: failures from now on end a running engine
        self._joined = False  # this process joined the group (and must leave it)
        self._watchdog: threading.Thread | None = None
        level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        ctx = mp.get_context("spawn")
        for rank in self.meet.local_ranks[1:]:
            args = WorkerArgs(rank, rank, self.meet, config, source, session_len, torch.get_num_threads(), level)
            mine, theirs = ctx.Pipe(duplex=False)
            process = ctx.Process(target=worker_main, args=(args, os.getpid(), theirs), name=f"opsctl-tp{rank}",
                                  daemon=True)
            process.start()
            theirs.close()
            self.workers.append(_Worker(rank, process, mine))
        # Garbage collection or interpreter exit without shutdown(): the workers still go.
        self._finalizer = weakref.finalize(self, _stop_processes, [w.process for w in self.workers])
        try:
            self._wait_joining()
            distributed.init(0, self.meet, device)
            self._joined = True
            self.runner = ModelRunner(config, source, session_len, tp_rank=0, local_rank=0)
        except BaseException:
            self.shutdown()
            raise
        if self.workers:  # a node 0 holding rank 0 alone has nobody local to watch
            self._watchdog = threading.Thread(target=self._watch, name="tp-watchdog", daemon=True)
            self._watchdog.start()
        log.info("tensor parallelism: %d ranks (%d in this machine's processes), %s at %s:%d", self.meet.world_size,
                 len(self.meet.local_ranks), "nccl" if device.type == "cuda" else "gloo", self.meet.addr,
                 self.meet.port)

    # -- start-up and death ----------------------------------------------------------------------
    def _wait_joining(self) -> None:
        """Wait until every local worker is about to join the group: one that fails first is reported, where
        rank 0 joining alone would wait for it until the group's timeout."""
        waiting = list(self.workers)
        while waiting:
            ready = wait([w.pipe for w in waiting] + [w.process.sentinel for w in waiting])
            for w in list(waiting):
                if w.pipe in ready or w.process.sentinel in ready:
                    w.read()
                    if w.message and w.message[0] == "joining":
                        waiting.remove(w)
                    elif not w.process.is_alive() or (w.message and w.message[0] == "failed"):
                        raise self._start_error(w)

    def _start_error(self, worker: _Worker) -> EngineError:
        worker.process.join(_JOIN_S)
        worker.read()
        if worker.message and worker.message[0] == "failed":
            _, kind, text = worker.message
            return error_from_name(kind, f"tensor-parallel rank {worker.rank}: {text}", "tp")
        return EngineError(worker.describe_end())

    def _watch(self) -> None:
        """Block until some worker ends; unless we are stopping them, record why and wake the engine.

        Only this thread reaps a worker that died: two threads waiting for one child race, and the loser
        would see it as still running.
        """
        ended = wait([w.process.sentinel for w in self.workers])
        if self._stopping:
            return
        dead = next(w for w in self.workers if w.process.sentinel in ended)
        dead.process.join(_JOIN_S)
        self._death = dead.describe_end()
        self._death_known.set()
        log.error("%s: the engine cannot go on", self._death)
        distributed.abort()  # NCCL: a collective blocked on the dead rank fails instead of hanging

    def _dead_reason(self, wait_s: float = 0.0) -> str | None:
        """Why a worker ended, or None while all run; waits up to `wait_s` for one that is ending."""
        if self._death is None and self._watchdog is not None and wait(self.sentinels, timeout=wait_s):
            self._death_known.wait(_REAP_S)  # ended: the watchdog is reaping it
        return self._death

    def _failed(self, error: BaseException) -> BaseException:
        """The error to raise after a step or allocation failed on rank 0: the engine is over."""
        seen = self._death is not None  # the watchdog has logged it already
        # A collective fails as soon as a dying peer's socket closes, before the process is reaped (seconds
        # later for a large one on a busy machine): wait for it, so the reason names the worker rather
        # than the broken socket.
        reason = self._dead_reason(_REAP_S)
        if reason is None:
            reason = f"a tensor-parallel step failed on rank 0: {type(error).__name__}: {first_line(error)}"
        if not self._started:  # start-up: the worker's own error (its class too), so the user sees what to fix
            failed = [w for w in self.workers if w.message and w.message[0] == "failed"]  # read by the watchdog
            self.shutdown(graceful=False)
            if failed:
                _, kind, text = failed[0].message
                return error_from_name(kind, f"tensor-parallel rank {failed[0].rank}: {text}", "tp")
            return EngineError(reason)
        if not seen:
            log.error("%s; stopping the tensor-parallel workers", reason)
        self.shutdown(graceful=False)
        return EngineDeadError(reason)

    def check_health(self) -> None:
        reason = self._dead_reason()
        if reason is not None or self._stopped:
            self.shutdown(graceful=False)
            raise EngineDeadError(reason or "the tensor-parallel workers have been stopped")

    @property
    def sentinels(self) -> list:
        return [w.process.sentinel for w in self.workers]

    # -- the engine's calls ----------------------------------------------------------------------
    def allocate(self, config: EngineConfig, max_batch_size: int) -> None:
        self.check_health()
        try:
            distributed.send_command(("allocate", config, max_batch_size))
            self.runner.allocate(config, max_batch_size)
        except EngineError as e:
            if self._dead_reason() is None:
                raise  # agreed by every rank (ModelRunner._agreed): the ranks are still in step
            raise self._failed(e) from e
        except Exception as e:
            raise self._failed(e) from e
        self._started = True

    def launch(self, plan: StepPlan) -> InFlightStep:
        self.check_health()
        try:
            distributed.send_command(("step", plan.for_workers()))
            return self.runner.launch(plan)
        except Exception as e:
            raise self._failed(e) from e
        except BaseException:
            # Ctrl-C in the middle of a step: the workers are somewhere in it and the next step's
            # collectives would pair with this one's. Stop them; the next call says why.
            self._death = self._death or "a tensor-parallel step was interrupted"
            self.shutdown(graceful=False)
            raise

    def shutdown(self, graceful: bool = True) -> None:
        """Stop the workers (graceful: tell them, so they leave the group cleanly) and leave the group."""
        if self._stopped:
            return
        self._stopping = self._stopped = True
        if graceful and self._death is None and self._joined:  # ranks on other nodes are told too
            try:
                distributed.send_command(None)
            except Exception:  # noqa: BLE001 - a rank is gone after all: terminate what is left
                pass
            for w in self.workers:
                w.process.join(_JOIN_S)
        _stop_processes([w.process for w in self.workers])
        for w in self.workers:
            w.pipe.close()
        if self._joined:
            distributed.destroy()
        self._finalizer.detach()
