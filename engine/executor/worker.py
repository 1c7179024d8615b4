"""A tensor-parallel worker: one rank other than 0, running rank 0's commands on its shard of the model.

A worker joins the process group, loads its shard, then waits for rank 0's commands (distributed.py's
gloo group): ("step", StepPlan) runs the forward with rank 0 (its collectives pair with rank 0's),
("allocate", EngineConfig, max_batch) makes the KV cache for new runtime settings, None ends it. It
answers nothing: rank 0 collects the step's tokens, and a worker that fails is seen by its peers at
once (gloo fails a collective whose peer is gone), and by the spawning process through its sentinel
and the one line the worker sends on its pipe before exiting.

Workers never outlive the engine: a spawned worker asks the kernel for SIGKILL when its parent exits
(PR_SET_PDEATHSIG), ignores Ctrl-C (the terminal's SIGINT reaches the whole process group; rank 0
stops its workers in order), and exits when rank 0's socket closes.

`run_worker_node` is a machine without rank 0: the other nodes of a multi-node engine (--node-rank > 0)
and ranks a launcher such as torchrun started itself.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass

from .. import distributed
from ..config import EngineConfig
from ..errors import EngineError, describe_load_failure, first_line

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class WorkerArgs:
    rank: int
    local_rank: int  # index among this machine's ranks: picks the GPU
    meet: distributed.Rendezvous
    config: EngineConfig
    source: object  # ModelSource
    session_len: int
    threads: int  # torch CPU threads: rank 0's, so every rank computes alike
    log_level: str = "warning"


def die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent exits (the parent's thread that started
    it, in fact: the engine starts its workers from the thread that builds the engine). Elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def worker_main(args: WorkerArgs, parent_pid: int | None = None, pipe=None) -> None:
    """Entry point of a worker process (spawned: parent_pid and pipe given) or of a launched rank."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..logs import configure_logging

    configure_logging(args.log_level)
    code = _run(args, pipe)
    if pipe is not None:
        pipe.close()
    sys.exit(code)


def _tell(pipe, message) -> None:
    if pipe is not None:
        try:
            pipe.send(message)
        except (OSError, ValueError):  # the parent is gone: nobody to tell
            pass


def _run(args: WorkerArgs, pipe) -> int:
    import torch

    from ..runner.model_runner import ModelRunner, pick_device

    torch.set_num_threads(max(1, args.threads))
    try:
        device = pick_device(args.config.device, args.local_rank)
        _tell(pipe, ("joining",))
        distributed.init(args.rank, args.meet, device)
        runner = ModelRunner(args.config, args.source, args.session_len, tp_rank=args.rank,
                             local_rank=args.local_rank)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line for rank 0 to report
        kind = type(e).__name__ if isinstance(e, EngineError) else "EngineError"
        _tell(pipe, ("failed", kind, describe_load_failure(getattr(args.source, "name", "the model"), e)))
        log.error("tensor-parallel rank %d could not start: %s", args.rank, first_line(e))
        return 1
    try:
        _serve(runner)
    except Exception as e:  # noqa: BLE001 - a failed step, or a peer gone: this rank is done either way
        log.error("tensor-parallel rank %d stopped: %s: %s", args.rank, type(e).__name__, first_line(e))
        _tell(pipe, ("failed", "EngineError", f"{type(e).__name__}: {first_line(e)}"))
        return 1
    finally:
        distributed.destroy()
    return 0


def _serve(runner) -> None:
    while True:
        command = distributed.receive_command()
        if command is None:
            return
        kind = command[0]
        if kind == "step":
            runner.launch(command[1])
        elif kind == "allocate":
            try:
                runner.allocate(command[1], command[2])
            except EngineError:
                pass  # every rank raised it (ModelRunner._agreed): rank 0 restores settings or gives up
        else:
            raise RuntimeError(f"unknown command {kind!r} from rank 0")


def run_worker_node(model: str | None, config: EngineConfig, log_level: str = "warning") -> int:
    """Run this machine's ranks of an engine whose rank 0 runs elsewhere, until rank 0 stops them.

    Returns 0 when every rank ended normally, 1 otherwise. The model must be the same path on every node.
    """
    import multiprocessing as mp

    import torch

    from ..models.source import resolve_model
    from ..request_factory import session_len_for
    from . import check_parallel_config

    source = resolve_model(model)
    check_parallel_config(source, config)
    meet = distributed.rendezvous(config)
    session_len = session_len_for(source, config.session_len)
    first = meet.local_ranks[0]
    ranks = ", ".join(str(r) for r in meet.local_ranks)
    print(f"opsctl serve: running tensor-parallel rank(s) {ranks} of {meet.world_size}, rank 0 at "
          f"{meet.addr}:{meet.port}", flush=True)
    args = [WorkerArgs(rank, meet.local_rank if meet.launched else rank - first, meet, config, source, session_len,
                       torch.get_num_threads(), log_level) for rank in meet.local_ranks]
    if meet.launched:  # the launcher started this rank: run it here
        try:
            worker_main(args[0])
        except SystemExit as e:
            return int(e.code or 0)
        return 0
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(a, os.getpid()), name=f"opsctl-tp{a.rank}", daemon=True)
             for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return 0 if all(p.exitcode == 0 for p in procs) else 1
