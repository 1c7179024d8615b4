"""torch.distributed for tensor parallelism: where the ranks meet, joining them, and the collectives.

One process is one rank. Two groups:
- the default group carries tensors during a step (NCCL on CUDA, gloo on CPU): one all-reduce after
  each attention and MLP block and after the vocab-parallel embedding, the logits gathered on rank 0,
  the sampled ids broadcast back. Its timeout bounds one collective of a step.
- a gloo group carries commands (step plans, allocations) from rank 0 to the workers as pickled
  objects. Workers wait on it between steps for as long as a server is idle, so its timeout is long;
  a rank that dies is noticed at once anyway: gloo fails a collective whose peer's socket closed.

NCCL's NVLink multicast (NVLS) is off (NCCL_NVLS_ENABLE=0) unless the user set the variable: its
buffers cost GPU memory on NVSwitch machines and it has hung communicator set-up in containers.

Where the ranks meet (`rendezvous`): the standard torch.distributed environment when it is set (a
launcher such as torchrun started every rank: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), else
EngineConfig.nnodes/node_rank with MASTER_ADDR/MASTER_PORT (required across machines; on one machine a
free local port). One tensor-parallel engine per process at a time: the default group is the
process's.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import EngineError, InvalidRequestError

# A step's collective waits at most this long for the other ranks (a long CPU prefill stays far below).
STEP_TIMEOUT = datetime.timedelta(minutes=30)
# Workers wait for rank 0's next command this long: in practice forever (an idle server).
IDLE_TIMEOUT = datetime.timedelta(days=365)

_control = None  # the gloo group for commands


@dataclass(frozen=True)
class Rendezvous:
    """Where and how the ranks of one engine meet.

    launched: a launcher started every rank itself (torchrun); this process is `rank` and spawns none.
    Otherwise each node's first process spawns the node's other ranks (`local_ranks`).
    """

    addr: str
    port: int
    world_size: int
    nnodes: int = 1
    node_rank: int = 0
    launched: bool = False
    rank: int = 0  # this process's rank when launched; the node's first rank otherwise
    local_rank: int = 0  # launched: its index on its machine ($LOCAL_RANK), which picks its GPU

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nnodes

    @property
    def local_ranks(self) -> range:
        """The ranks this process (and the workers it spawns) runs."""
        if self.launched:
            return range(self.rank, self.rank + 1)
        first = self.node_rank * self.ranks_per_node
        return range(first, first + self.ranks_per_node)

    @property
    def url(self) -> str:
        if self.launched:  # the launcher's store (torchrun's agent may already hold MASTER_PORT)
            return "env://"
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"tcp://{host}:{self.port}"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"${name}={value!r} is not an integer", "tp") from None


def rendezvous(config) -> Rendezvous:
    """The rendezvous of an engine with `config` (tp > 1), from the environment and the config."""
    tp, nnodes, node_rank = config.tp, config.nnodes, config.node_rank
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    addr, port = os.environ.get("MASTER_ADDR") or None, _env_int("MASTER_PORT")
    if rank is not None and world is not None:  # started by a launcher: every rank is its own process
        if world != tp:
            raise InvalidRequestError(f"$WORLD_SIZE is {world} but --tp is {tp}: every rank of the launcher is one "
                                      "tensor-parallel rank, so they must be equal", "tp")
        if not 0 <= rank < world:
            raise InvalidRequestError(f"$RANK {rank} is outside 0..{world - 1}", "tp")
        if addr is None or port is None:
            raise InvalidRequestError("$RANK and $WORLD_SIZE are set but $MASTER_ADDR or $MASTER_PORT is not: set "
                                      "both (torchrun does)", "tp")
        return Rendezvous(addr, port, world, nnodes=1, launched=True, rank=rank,
                          local_rank=_env_int("LOCAL_RANK") or 0)
    if nnodes > 1 and (addr is None or port is None):
        raise InvalidRequestError("--nnodes > 1 needs $MASTER_ADDR and $MASTER_PORT: the address of node 0 and a "
                                  "free port on it, the same on every node", "nnodes")
    return Rendezvous(addr or "127.0.0.1", port or free_port(), tp, nnodes, node_rank,
                      rank=node_rank * (tp // nnodes))


def holds_rank_zero(config) -> bool:
    """Whether this process is where rank 0 (the engine, the server) runs; false on the other nodes of a
    multi-node engine and in a launcher's ranks other than 0, which run workers only."""
    if config.tp == 1:
        return True
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is not None and world is not None:
        return rank == 0
    return config.node_rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, meet: Rendezvous, device: torch.device) -> None:
    """Join the engine's ranks as `rank` (blocks until all have joined)."""
    global _control
    if dist.is_initialized():
        raise EngineError("this process already runs a tensor-parallel engine: shut it down first "
                          "(LLMEngine.shutdown(), Pipeline.close()); one per process")
    if device.type == "cuda":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        dist.init_process_group("nccl", init_method=meet.url, rank=rank, world_size=meet.world_size,
                                timeout=STEP_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", init_method=meet.url, rank=rank, world_size=meet.world_size,
                                timeout=STEP_TIMEOUT)
    _control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)


def destroy() -> None:
    """Leave the group (this process may then join another engine's)."""
    global _control
    _control = None
    if dist.is_initialized():
        dist.destroy_process_group()


def abort() -> None:
    """Make collectives blocked in other threads fail now: NCCL does not notice a dead peer by itself."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


# -- collectives of a step (default group) ---------------------------------------------------------
def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the ranks in place (every rank gets the same sum)."""
    dist.all_reduce(x)
    return x


def gather_last_dim(x: torch.Tensor) -> torch.Tensor | None:
    """Rank 0: the ranks' `x` concatenated along the last dimension; other ranks: None."""
    x = x.contiguous()
    if dist.get_rank() != 0:
        dist.gather(x, None, dst=0)
        return None
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.gather(x, parts, dst=0)
    return torch.cat(parts, dim=-1)


def broadcast_from_first(x: torch.Tensor) -> torch.Tensor:
    dist.broadcast(x, src=0)
    return x


# -- commands (gloo group) -------------------------------------------------------------------------
def send_command(command) -> None:
    """Rank 0: hand `command` (any picklable object) to every other rank."""
    dist.broadcast_object_list([command], src=0, group=_control, device=torch.device("cpu"))


def receive_command():
    """Other ranks: the next command of rank 0 (waits as long as rank 0 is idle)."""
    box = [None]
    dist.broadcast_object_list(box, src=0, group=_control, device=torch.device("cpu"))
    return box[0]


def min_over_ranks(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_control)
    return int(t.item())


def gather_objects(value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value, group=_control)
    return out
