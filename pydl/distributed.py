"""Running pydl on more than one process: thin helpers over torch.distributed (gloo on CPU, NCCL on GPU).

pydl does not invent a scheme of its own: a process group that ``torchrun`` (or your code) set up is used as
is. What lives here:

* :func:`init_from_env` -- join the group ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT), if not already initialised;
* :func:`rank_and_world`, :func:`shard` -- who am I, and which items of a work list are mine (round-robin);
* :func:`gather_to_rank0` -- collect picklable results on rank 0;
* :func:`run_local` -- start N processes on this machine with gloo on 127.0.0.1 (tests, examples), bounded in
  time, each cleaning up its process group.

Multi-GPU / multi-node: ``torchrun --nproc-per-node 8 train.py`` (one node) or ``torchrun --nnodes 2
--nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py`` (two nodes); inside, call
``pydl.distributed.init_from_env()``. See README "Multi-GPU / multi-node".
"""
from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group=None) -> Tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when no process group is initialised."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def init_from_env(backend: Optional[str] = None, timeout_s: float = 300.0) -> bool:
    """Initialise the default process group from torchrun's environment variables. Returns True if this
    call initialised it, False if it was already initialised or the environment describes no group."""
    if is_initialized() or "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shard(items: Sequence, rank: Optional[int] = None, world: Optional[int] = None, group=None) -> List:
    """This rank's share of ``items``: every world-th item starting at its rank (balanced to within one)."""
    if rank is None or world is None:
        rank, world = rank_and_world(group)
    return list(items)[rank::world]


def gather_to_rank0(obj: Any, group=None) -> Optional[List[Any]]:
    """Every rank's ``obj`` in a list on rank 0 (None elsewhere); ``[obj]`` without a process group."""
    rank, world = rank_and_world(group)
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0, group=group)
    return out


def broadcast_from_rank0(obj: Any, group=None) -> Any:
    rank, world = rank_and_world(group)
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple, timeout_s: float, result_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # N processes on a small machine: don't oversubscribe the cores
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        res = fn(rank, world, *args)
        torch.save(res, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable, world: int = 2, args: tuple = (), timeout_s: float = 120.0) -> List[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` processes on this machine (gloo over 127.0.0.1) and return
    their results in rank order. ``fn`` must be importable (defined at module level). Every collective has
    ``timeout_s``; the processes end their process groups however ``fn`` ends."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_entry, args=(world, free_port(), fn, args, timeout_s, d), nprocs=world, join=True,
                           start_method="spawn")
        return [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=False) for r in range(world)]
