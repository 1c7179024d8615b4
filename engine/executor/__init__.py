"""Executors: what runs the model runner(s) under the engine (base.py: the interface the engine uses).

- UniProcExecutor (uniproc.py): tp 1, the runner in the engine's process.
- MultiprocExecutor (multiproc.py): tp > 1, rank 0's runner in the engine's process and one worker
  process per other rank (worker.py), joined by torch.distributed (engine/distributed.py).
`check_parallel_config` refuses a tp the model cannot take, reading config.json only, so it runs before
anything is loaded (the engine, and the server before it starts the engine process).
"""
from __future__ import annotations

from ..config import EngineConfig
from ..errors import InvalidRequestError
from ..layers.partition import check_tensor_parallel
from ..models.weight_format import resolve_weight_format
from .base import Executor


def check_parallel_config(source, config: EngineConfig) -> None:
    """InvalidRequestError in one line when `config.tp` cannot split `source`'s model (or the nodes do not
    split the ranks); nothing otherwise."""
    if config.node_rank >= config.nnodes:
        raise InvalidRequestError(f"--node-rank {config.node_rank} must be below --nnodes {config.nnodes}",
                                  "node_rank")
    if config.tp % config.nnodes:
        raise InvalidRequestError(f"--tp {config.tp} must be a multiple of --nnodes {config.nnodes} (the same "
                                  "number of ranks on every node)", "nnodes")
    if config.tp == 1:
        return
    fmt = resolve_weight_format(source, config.model_format)
    check_tensor_parallel(source.hf_config, config.tp, fmt.name, fmt.group_size, source.name)


def make_executor(config: EngineConfig, source, session_len: int) -> Executor:
    """The executor for `config` with its weights loaded on every rank (rank 0 in this process)."""
    if config.tp == 1:
        from .uniproc import UniProcExecutor

        return UniProcExecutor(config, source, session_len)
    from .multiproc import MultiprocExecutor

    return MultiprocExecutor(config, source, session_len)


__all__ = ["Executor", "check_parallel_config", "make_executor"]
