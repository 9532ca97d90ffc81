"""``pydl.nn.SyncBatchNorm``: batch norm whose statistics span every rank of a process group.

Each rank holds part of the global batch. Training forward, per channel:

1. local ``(count, mean, M2)`` from pydl's ``batch_norm_stats`` kernel (one pass over the local batch);
2. ONE collective: an all-gather of those triples (2C + 1 numbers per rank), merged on every rank in rank
   order with Chan's formula -- the same merge the kernels use between blocks, so the global mean and
   variance are as accurate as a single process's (a sum / sum-of-squares all-reduce would cancel badly
   when |mean| >> std), and identical on every rank;
3. ``batch_norm_apply`` normalises the local batch with the global statistics (plus the fused activation);
   the running stats are updated with the global unbiased variance.

Backward: the two per-channel sums of ``batch_norm_backward_reduce`` are all-reduced (ONE collective), then
``batch_norm_backward_elemt`` gives the local input gradient. The weight and bias gradients stay local, as in
torch: DistributedDataParallel all-reduces parameter gradients itself.

Without an initialised process group, in eval mode, or with a group of one rank, it is exactly pydl's
BatchNorm. ``pydl.convert`` maps ``torch.nn.SyncBatchNorm`` to it and back; the state_dict is torch's.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as tnn

from ..ops import _activation
from ..ops.batch_norm import (batch_norm_apply, batch_norm_backward_elemt, batch_norm_backward_reduce,
                              batch_norm_stats, channel_count)
from .batchnorm import PydlBatchNorm
from .convert import register

__all__ = ["SyncBatchNorm", "merge_moments"]


def merge_moments(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor):
    """Chan et al.'s merge of per-rank (count, mean, M2), in rank order: counts (R,), means/m2s (R, C).
    Returns (count, mean (C,), M2 (C,)). Float64 inside: C-sized, so precision is free."""
    n = torch.zeros((), dtype=torch.float64, device=means.device)
    mean = torch.zeros(means.shape[1], dtype=torch.float64, device=means.device)
    m2 = torch.zeros_like(mean)
    for r in range(means.shape[0]):
        nb = counts[r].double()
        if nb == 0:
            continue
        if n == 0:
            # the first non-empty rank's statistics as they are: merging into the empty (0, 0, 0) would form
            # delta^2 * 0, which is NaN when that rank's mean is infinite (a channel holding inf)
            n, mean, m2 = nb, means[r].double(), m2s[r].double()
            continue
        nn_ = n + nb
        mb = means[r].double()
        delta = mb - mean
        w = nb / nn_
        # an infinite mean on either side makes delta inf (or NaN) and mean + delta * w NaN; the convex
        # combination gives the inf that torch's mean of such a channel is (kernels/_moments.py, same rule)
        mean = torch.where(torch.isfinite(delta), mean + delta * w, mean * (1 - w) + mb * w)
        m2 = m2 + m2s[r].double() + delta * delta * (n * w)
        n = nn_
    return n, mean, m2


class _SyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, nbt, group, act, leak, sub, maxv,
                backend):
        mean_l, m2_l = batch_norm_stats(x, backend=backend)
        n_l = channel_count(x)
        C = mean_l.shape[0]
        packed = torch.cat([torch.tensor([float(n_l)], dtype=torch.float64, device=x.device),
                            mean_l.double(), m2_l.double()])
        world = dist.get_world_size(group)
        parts = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(parts, packed, group=group)
        allp = torch.stack(parts)
        n, mean, m2 = merge_moments(allp[:, 0], allp[:, 1:C + 1], allp[:, C + 1:])
        count = int(n.item())  # a host sync: the count is needed as an int by the kernels below
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count} in all ranks")
        var = m2 / n
        mean_a, var_a = mean.to(mean_l.dtype), var.to(mean_l.dtype)
        invstd = torch.rsqrt(var_a + eps)
        y = batch_norm_apply(x, mean_a, invstd, weight, bias, act, leak, sub, maxv, backend=backend)
        if running_mean is not None:
            torch.ops.pydl.batch_norm_update_running(running_mean, running_var, mean_a, var_a, count,
                                                     None if momentum is None else float(momentum), nbt,
                                                     backend)
        ctx.save_for_backward(x, weight, bias, mean_a, invstd)
        ctx.meta = (group, count, act, leak, sub, maxv, backend)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        group, count, act, leak, sub, maxv, backend = ctx.meta
        dy = dy.contiguous(memory_format=torch.channels_last) if (
            x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()) \
            else dy.contiguous()
        sum_dz, sum_dz_xmu = batch_norm_backward_reduce(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv,
                                                        backend=backend)
        # local parameter gradients (DDP averages them over ranks, as for any parameter)
        dweight = (sum_dz_xmu * invstd).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dz.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dz, sum_dz_xmu])
            dist.all_reduce(both, group=group)  # the global sums the input gradient needs
            C = sum_dz.shape[0]
            dx = batch_norm_backward_elemt(dy, x, mean, invstd, weight, bias, both[:C], both[C:], count, act, leak,
                                           sub, maxv, backend=backend)
        return (dx, dweight, dbias) + (None,) * 11


class SyncBatchNorm(PydlBatchNorm, tnn.modules.batchnorm._BatchNorm):
    """Drop-in for torch.nn.SyncBatchNorm running pydl's batch_norm kernels (same constructor, parameters,
    buffers and state_dict), plus an optional fused activation. Runs on CPU (gloo) as well as GPU (NCCL).

    It derives from torch's ``_BatchNorm``, not from ``torch.nn.SyncBatchNorm``: DistributedDataParallel
    refuses anything that *is* a torch SyncBatchNorm in a CPU module ("SyncBatchNorm layers only work with
    GPU modules"), and pydl's works on the CPU."""

    _torch_cls = tnn.SyncBatchNorm

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, act: str = "none",
                 leak: Optional[float] = None, sub: Optional[float] = None, maxv: Optional[float] = None,
                 backend: Optional[str] = None):
        tnn.modules.batchnorm._BatchNorm.__init__(self, num_features, eps, momentum, affine, track_running_stats,
                                                  device=device, dtype=dtype)
        self.process_group = process_group
        self._pydl_init(act, leak, sub, maxv, backend)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _synced(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group or dist.group.WORLD) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._synced():
            return PydlBatchNorm.forward(self, input)
        self._check_input_dim(input)
        from .. import backends

        momentum, nbt = self.momentum, None
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                nbt = self.num_batches_tracked
        act = self.act
        leak, sub, maxv = _activation.params(act, self.leak, self.sub, self.maxv)
        backend = self.backend or backends.get_backend()
        use_running = self.track_running_stats
        return _SyncBN.apply(input, self.weight, self.bias, self.running_mean if use_running else None,
                             self.running_var if use_running else None, self.eps,
                             momentum if momentum is not None or nbt is not None else 0.0, nbt,
                             self.process_group or dist.group.WORLD, act, leak, sub, maxv, backend)

    @classmethod
    def from_torch(cls, m: tnn.Module, act: str = "none", leak=None, sub=None, maxv=None, backend=None):
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, m.process_group,
                  device="meta", act=act, leak=leak, sub=sub, maxv=maxv, backend=backend)
        return cls._share(m, new)

    def to_torch(self) -> tnn.Module:
        if self.act != "none":
            raise ValueError("SyncBatchNorm with a fused activation has no torch twin")
        new = tnn.SyncBatchNorm(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats,
                                self.process_group, device="meta")
        return self._share(self, new)

    @classmethod
    def convert_sync_batchnorm(cls, module: tnn.Module, process_group=None) -> tnn.Module:
        """Like torch.nn.SyncBatchNorm.convert_sync_batchnorm: every BatchNorm*d (torch's or pydl's) in
        ``module`` becomes a pydl SyncBatchNorm sharing its tensors (and a pydl BatchNorm's fused act)."""
        if isinstance(module, tnn.modules.batchnorm._BatchNorm) and not isinstance(module, (tnn.SyncBatchNorm, cls)):
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      process_group, device="meta", act=getattr(module, "act", "none"),
                      leak=getattr(module, "leak", None), sub=getattr(module, "sub", None),
                      maxv=getattr(module, "maxv", None), backend=getattr(module, "backend", None))
            return cls._share(module, new)
        for name, child in list(module.named_children()):
            module.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return module


register(tnn.SyncBatchNorm, SyncBatchNorm)
