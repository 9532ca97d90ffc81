"""``act_stats``: everything a training debugger wants to know about a tensor, in one pass.

For the whole tensor, or for each channel (dim 1) of a tensor of rank >= 2:

* ``count`` (elements), ``mean``, ``var`` / ``std`` (population) and ``var_unbiased`` / ``std_unbiased``,
  ``min``, ``max`` -- over the *finite* values (NaN and +-Inf are counted instead of poisoning the stats);
* ``near_zero``: how many values have ``|x| <= eps``;
* ``nan``, ``posinf``, ``neginf``: how many of each;
* ``hist``: ``bins`` int64 counts over ``[lo, hi]``, plus ``below`` / ``above`` for finite values outside.

Every element is in exactly one of hist, below, above, nan, posinf, neginf, so those add up to ``count``.

**Bin rule** (torch.histc's, on the CPU): in the accumulation dtype (float32; float64 for float64 input),
``t = ((x - lo) * bins) / (hi - lo)``; the bin is ``min(int(t), bins - 1)`` for ``lo <= x <= hi``, so
``x == hi`` goes in the last bin. For float32/float64 input the counts equal ``torch.histc(x, bins, lo, hi)``
exactly; float16/bfloat16 are binned after an exact upcast to float32 (= ``torch.histc(x.float(), ...)``).

**Empty input** (or a group with no finite value): ``count`` 0 (or the number of non-finite values),
``mean``, ``min``, ``max``, ``var`` are NaN; the counters are 0.

The op returns three tensors (no host sync): ``fstats`` ``(G, 4)`` = mean, M2 (sum of squared deviations),
min, max in the accumulation dtype; ``counts`` ``(G, 7)`` int64 = numel, near_zero, nan, posinf, neginf,
below, above; ``hist`` ``(G, bins)`` int64. :func:`act_stats` wraps them in an :class:`ActStats`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import backends
from ._common import LIB, acc_dtype, check_floating, compiled

__all__ = ["act_stats", "ActStats", "act_stats_reference"]

COUNT_COLS = ("count", "near_zero", "nan", "posinf", "neginf", "below", "above")

LIB.define("act_stats(Tensor x, int bins, float lo, float hi, float eps, bool per_channel, str backend) "
           "-> (Tensor, Tensor, Tensor)")


def check_args(x, bins, lo, hi, eps, per_channel) -> None:
    check_floating(x, "act_stats", "x")
    if not isinstance(bins, int) or not 1 <= bins <= 1 << 24:
        raise ValueError(f"pydl.act_stats: bins must be an int in [1, 2**24], got {bins!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"pydl.act_stats: need finite lo < hi, got lo={lo}, hi={hi}")
    if x.dtype != torch.float64:  # the bin edges live in float32: they must stay distinct there
        import numpy as np

        if not np.float32(lo) < np.float32(hi):
            raise ValueError(f"pydl.act_stats: lo={lo} and hi={hi} are equal in float32")
    if not eps >= 0:
        raise ValueError(f"pydl.act_stats: eps must be >= 0, got {eps}")
    if per_channel and x.dim() < 2:
        raise ValueError(f"pydl.act_stats: per_channel needs x of rank >= 2 (N, C, ...), got rank {x.dim()}")


# --------------------------------------------------------------------------------------------------
# reference: plain PyTorch, written to be read
# --------------------------------------------------------------------------------------------------

def act_stats_reference(x, bins, lo, hi, eps, per_channel):
    acc = acc_dtype(x.dtype)
    G = x.shape[1] if per_channel else 1
    # (G, M): one row of values per group
    M = x.numel() // G if G else 0
    rows = x.transpose(0, 1).reshape(G, M) if per_channel else x.reshape(1, M)
    v = rows.to(acc)
    finite = torch.isfinite(v)
    n = finite.sum(1)
    # two-pass mean / M2 over the finite values (NaN mean for a group with none)
    mean = torch.where(finite, v, 0).sum(1) / n
    m2 = torch.where(finite, v - mean[:, None], 0).square().sum(1)
    m2 = torch.where(n > 0, m2, 0)
    inf = torch.tensor(float("inf"), dtype=acc, device=x.device)
    mn = torch.where(finite, v, inf).amin(1) if v.shape[1] else torch.full((G,), math.inf, dtype=acc, device=x.device)
    mx = torch.where(finite, v, -inf).amax(1) if v.shape[1] else torch.full((G,), -math.inf, dtype=acc, device=x.device)
    nan = torch.tensor(float("nan"), dtype=acc, device=x.device)
    mn, mx = torch.where(n > 0, mn, nan), torch.where(n > 0, mx, nan)
    fstats = torch.stack([mean, m2, mn, mx], 1)

    # the bin rule, in the accumulation dtype, exactly as torch.histc computes it
    lo_t = torch.tensor(lo, dtype=acc, device=x.device)
    hi_t = torch.tensor(hi, dtype=acc, device=x.device)
    inside = finite & (v >= lo_t) & (v <= hi_t)
    t = ((torch.where(inside, v, lo_t) - lo_t) * bins) / (hi_t - lo_t)
    idx = t.to(torch.int64).clamp_max(bins - 1)
    flat = (idx + torch.arange(G, device=x.device)[:, None] * bins)[inside]
    hist = torch.bincount(flat, minlength=G * bins).reshape(G, bins)

    counts = torch.stack([
        torch.full((G,), rows.shape[1], dtype=torch.int64, device=x.device),
        (v.abs() <= eps).sum(1),
        torch.isnan(v).sum(1),
        (v == math.inf).sum(1),
        (v == -math.inf).sum(1),
        (finite & (v < lo_t)).sum(1),
        (finite & (v > hi_t)).sum(1),
    ], 1)
    return fstats, counts, hist


def _triton_impl():
    from ..kernels.act_stats import act_stats_triton

    return act_stats_triton


OP = backends.register_op(backends.Op("act_stats", {
    "reference": lambda: act_stats_reference,
    "cpu": compiled("pydl_cpu", "act_stats"),
    "cuda": compiled("pydl_cuda", "act_stats"),
    "cuda_emu": compiled("pydl_cuda_emu", "act_stats"),
    "triton": _triton_impl,
}))


def _kernel(x, bins, lo, hi, eps, per_channel, backend):
    check_args(x, bins, lo, hi, eps, per_channel)
    return OP(backend, x.device.type, x, bins, lo, hi, eps, per_channel)


LIB.impl("act_stats", _kernel, "CPU")
LIB.impl("act_stats", _kernel, "CUDA")


@torch.library.register_fake("pydl::act_stats")
def _fake(x, bins, lo, hi, eps, per_channel, backend):
    check_args(x, bins, lo, hi, eps, per_channel)
    G = x.shape[1] if per_channel else 1
    return (x.new_empty((G, 4), dtype=acc_dtype(x.dtype)), x.new_empty((G, 7), dtype=torch.int64),
            x.new_empty((G, bins), dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# The result object and the public function
# --------------------------------------------------------------------------------------------------

class ActStats:
    """The result of :func:`act_stats`. Fields are tensors on the input's device (0-dim for a whole-tensor
    call, ``(C,)`` per channel; ``hist`` adds a ``bins`` dimension). Nothing here syncs with the host until
    you call :meth:`to_dict` or ``.item()``."""

    __slots__ = ("fstats", "counts", "hist_all", "bins", "lo", "hi", "eps", "per_channel")

    def __init__(self, fstats, counts, hist, bins, lo, hi, eps, per_channel):
        self.fstats, self.counts, self.hist_all = fstats, counts, hist
        self.bins, self.lo, self.hi, self.eps, self.per_channel = bins, lo, hi, eps, per_channel

    def _pick(self, t):
        return t if self.per_channel else t[0]

    # counts
    @property
    def count(self):
        return self._pick(self.counts[:, 0])

    @property
    def near_zero(self):
        return self._pick(self.counts[:, 1])

    @property
    def nan(self):
        return self._pick(self.counts[:, 2])

    @property
    def posinf(self):
        return self._pick(self.counts[:, 3])

    @property
    def neginf(self):
        return self._pick(self.counts[:, 4])

    @property
    def below(self):
        return self._pick(self.counts[:, 5])

    @property
    def above(self):
        return self._pick(self.counts[:, 6])

    @property
    def finite(self):
        c = self.counts
        return self._pick(c[:, 0] - c[:, 2] - c[:, 3] - c[:, 4])

    @property
    def hist(self):
        return self._pick(self.hist_all)

    @property
    def edges(self):
        """The ``bins + 1`` bin edges (as torch.linspace(lo, hi, bins + 1))."""
        return torch.linspace(self.lo, self.hi, self.bins + 1, dtype=self.fstats.dtype, device=self.fstats.device)

    # statistics of the finite values
    @property
    def mean(self):
        return self._pick(self.fstats[:, 0])

    @property
    def m2(self):
        return self._pick(self.fstats[:, 1])

    @property
    def min(self):
        return self._pick(self.fstats[:, 2])

    @property
    def max(self):
        return self._pick(self.fstats[:, 3])

    @property
    def var(self):
        """Population variance (divide by n), as ``torch.var(x, correction=0)``."""
        return self.m2 / self.finite.to(self.m2.dtype)

    @property
    def var_unbiased(self):
        """Sample variance (divide by n - 1), as ``torch.var(x)``."""
        return self.m2 / (self.finite.to(self.m2.dtype) - 1)

    @property
    def std(self):
        return self.var.sqrt()

    @property
    def std_unbiased(self):
        return self.var_unbiased.sqrt()

    @property
    def near_zero_frac(self):
        return self.near_zero.to(self.fstats.dtype) / self.count.to(self.fstats.dtype)

    def to_dict(self) -> dict:
        """Plain Python numbers and lists (one device-to-host copy per field group)."""
        fs = self.fstats.double().cpu()
        cnt = self.counts.cpu()
        out = {"bins": self.bins, "lo": self.lo, "hi": self.hi, "eps": self.eps, "per_channel": self.per_channel}
        n_fin = (cnt[:, 0] - cnt[:, 2] - cnt[:, 3] - cnt[:, 4]).double()
        cols = {"mean": fs[:, 0], "min": fs[:, 2], "max": fs[:, 3], "var": fs[:, 1] / n_fin,
                "var_unbiased": fs[:, 1] / (n_fin - 1)}
        cols["std"], cols["std_unbiased"] = cols["var"].sqrt(), cols["var_unbiased"].sqrt()
        for i, name in enumerate(COUNT_COLS):
            cols[name] = cnt[:, i]
        for k, v in cols.items():
            out[k] = v.tolist() if self.per_channel else v[0].item()
        h = self.hist_all.cpu()
        out["hist"] = h.tolist() if self.per_channel else h[0].tolist()
        return out

    def __repr__(self):
        where = f"per channel, C={self.fstats.shape[0]}" if self.per_channel else "whole tensor"
        return f"ActStats({where}, bins={self.bins}, range=[{self.lo}, {self.hi}], eps={self.eps})"


def act_stats(x: torch.Tensor, bins: int = 40, lo: float = 0.0, hi: float = 10.0, eps: float = 0.05,
              per_channel: bool = False, backend: Optional[str] = None) -> ActStats:
    """One pass over ``x``: count, mean, var/std, min, max, near-zero count, NaN/Inf counts and a ``bins``-bin
    histogram over ``[lo, hi]`` (int64, torch.histc's bin rule), for the whole tensor or per channel (dim 1).

    The defaults are fastai's ``histc(40, 0, 10)``; ``near_zero`` counts ``|x| <= eps``.
    ``backend``: ``"reference"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"auto"`` (default: the current
    :func:`pydl.backend` context or process default).
    """
    name = backends.get_backend() if backend is None else backend
    fstats, counts, hist = torch.ops.pydl.act_stats(x, int(bins), float(lo), float(hi), float(eps),
                                                    bool(per_channel), name)
    return ActStats(fstats, counts, hist, int(bins), float(lo), float(hi), float(eps), bool(per_channel))
