"""Running pydl on more than one process: thin helpers over torch.distributed (gloo on CPU, NCCL on GPU).

pydl does not invent a scheme of its own: a process group that ``torchrun`` (or your code) set up is used as
is. What lives here:

* :func:`init_from_env` -- join the group ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT), if not already initialised;
* :func:`rank_and_world`, :func:`shard` -- who am I, and which items of a work list are mine (round-robin);
* :func:`gather_to_rank0`, :func:`broadcast_from_rank0` -- collect picklable results on / send them from
  rank 0 *of the group* passed in (which need not hold the job's rank 0: ranks 2 and 3 of 4 form a group
  whose rank 0 is global rank 2);
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

import numpy as np
import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group=None) -> Tuple[int, int]:
    """(rank, world size) in ``group`` -- the rank within the group, not the job's; (0, 1) when no process
    group is initialised."""
    if not is_initialized():
        return 0, 1
    rank = dist.get_rank(group)
    if rank < 0:  # torch answers -1 to a process outside the group; every collective on it would misbehave
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of the group passed as "
                         "group=; call it only on the group's ranks")
    return rank, dist.get_world_size(group)


def _global_rank_of_group_root(group) -> int:
    """The job-wide rank of the group's rank 0. torch's object collectives take ``dst``/``src`` as *global*
    ranks (``group_dst``/``group_src`` exist only from torch 2.6; pydl supports 2.4): passing a plain 0 with a
    group that does not contain global rank 0 names a process outside the group."""
    return 0 if group is None else dist.get_global_rank(group, 0)


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
    """Every rank's ``obj`` in a list (in group-rank order) on the group's rank 0, None elsewhere; ``[obj]``
    without a process group."""
    rank, world = rank_and_world(group)
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=_global_rank_of_group_root(group), group=group)
    return out


def broadcast_from_rank0(obj: Any, group=None) -> Any:
    """The group's rank 0's ``obj`` on every rank of the group (``obj`` itself without a process group)."""
    rank, world = rank_and_world(group)
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=_global_rank_of_group_root(group), group=group)
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


# --------------------------------------------------------------------------------------------------
# Loss landscapes, sharded over ranks and resumable
# --------------------------------------------------------------------------------------------------

def _load_partials(result, checkpoint_dir: Optional[str]):
    """Merge every partial result found in ``checkpoint_dir`` (the merged file and every rank's shard file,
    whatever world size wrote them) into ``result``. Every rank reads the same files before any rank writes,
    so all ranks agree on what is missing."""
    import glob

    from .debug.landscape import LandscapeResult

    if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
        return result
    for path in sorted(glob.glob(os.path.join(checkpoint_dir, "*.npz"))):
        if path.endswith(".tmp.npz"):
            continue
        old = LandscapeResult.load(path)
        keys = ("kind", "seed", "include_bias_bn", "batches")
        if not (old.same_grid(result) and all(old.meta.get(k) == result.meta.get(k) for k in keys)):
            raise ValueError(f"sharded landscape: {path} holds a different scan (grid or {keys})")
        result.merge(old)
    return result


def sharded_landscape(model, loss_fn, data, ndim: int = 2, steps=21, span=(-1.0, 1.0), seed: int = 0,
                      include_bias_bn: bool = False, batches: Optional[int] = 1, checkpoint_dir: Optional[str] = None,
                      group=None, show_progress: bool = False, checkpoint_every: int = 50):
    """:func:`pydl.debug.loss_landscape_1d` / ``_2d`` with the grid's points split over the ranks of ``group``
    (every rank holds the same model and data; run under torchrun, or with no process group as one process).

    * Directions come from ``seed`` alone, so every rank builds the same ones without communicating.
    * Rank r evaluates ``missing[r::world]`` and checkpoints its shard to ``checkpoint_dir/shard<r>.npz``;
      rank 0 gathers the shards, merges them and saves ``checkpoint_dir/landscape.npz``. Ranks are those
      within ``group``: several groups can each scan at once, each with its own ``checkpoint_dir``.
    * Resumable: on (re)start every partial result in ``checkpoint_dir`` is merged first, and only the points
      still missing are evaluated -- by whatever number of ranks the restart has.
    * On the CPU the result equals the single-process scan bit for bit (each point is the same forward pass
      on the same weights; the split changes only who computes it).

    Returns the complete :class:`~pydl.debug.LandscapeResult` on every rank. Cost: ``points * batches``
    forward passes in all, ``/ world`` per rank.
    """
    from .debug.landscape import LandscapeResult, evaluate_points, make_directions, result_meta

    if ndim not in (1, 2):
        raise ValueError(f"sharded_landscape: ndim must be 1 or 2, got {ndim}")
    rank, world = rank_and_world(group)
    d = make_directions(model, ndim, seed, include_bias_bn)
    if ndim == 1:
        result = LandscapeResult(np.linspace(span[0], span[1], steps), meta=result_meta(d, batches, data))
    else:
        nx, ny = (steps, steps) if isinstance(steps, int) else steps
        (x0, x1), (y0, y1) = (span, span) if not isinstance(span[0], (tuple, list)) else span
        result = LandscapeResult(np.linspace(x0, x1, nx), np.linspace(y0, y1, ny),
                                 meta=result_meta(d, batches, data))
    result = _load_partials(result, checkpoint_dir)
    if world > 1:
        dist.barrier(group)  # everyone has read the old files before anyone writes new ones
    mine = result.missing()[rank::world]
    shard_path = os.path.join(checkpoint_dir, f"shard{rank}.npz") if checkpoint_dir else None
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
    evaluate_points(model, loss_fn, data, d, result, mine, batches, show_progress, shard_path, checkpoint_every)
    parts = gather_to_rank0((result.loss, result.done), group)
    if rank == 0:
        for loss, done in parts:
            result.merge(LandscapeResult(result.xs, result.ys, loss, done, result.meta))
        if checkpoint_dir:
            result.save(os.path.join(checkpoint_dir, "landscape.npz"))
    loss, done = broadcast_from_rank0((result.loss, result.done), group)
    return LandscapeResult(result.xs, result.ys, loss, done, result.meta)
