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

**Arguments** are checked in the caller's terms (TypeError for a wrong type, ValueError for a bad value,
each naming the argument): ``bins`` an int in [1, 2**24] (not 3.7, '10' or True); ``lo`` < ``hi`` finite
floats that stay finite and distinct in the accumulation dtype, with ``(hi - lo) * bins`` below its maximum
(float32: 3.4e38) -- the bin rule's largest intermediate; ``eps`` >= 0; ``per_channel`` a bool.

**Large values**: the statistics are those of the exact values, rounded to the accumulation dtype. Sums that
overflow while the mean does not (float32 data near 3e38) fall back to a wider or pre-scaled sum, and
merges of partial results never form inf - inf: a var too large for the dtype is inf, never NaN.

**Where pydl deliberately differs from torch** (each one found by tests/test_fuzz_act_stats.py):

* a range so wide that ``(hi - lo) * bins`` overflows is refused; torch.histc accepts it and misbins or
  drops values (``histc(x, 10, -3e38, 3e38)`` counts nothing);
* ``mean`` of float32 data whose float32 sum overflows is the finite true mean; torch.mean returns inf;
* M2 is stored in the accumulation dtype, so ``var`` is inf when the sum of squared deviations exceeds
  it (float32: 3.4e38) even if the variance itself would fit (torch.var accumulates in float64);
* the float32-accumulating backends (triton, cuda) round each block's mean to float32 before the second
  pass: for data beyond ~1e26 in magnitude with little spread that rounding alone can push M2 past
  float32's range (var inf where the true var is small); reference and cpu merge in float64. float64 data
  near float64's maximum has the same limit in every backend.

The op returns three tensors (no host sync): ``fstats`` ``(G, 4)`` = mean, M2 (sum of squared deviations),
min, max in the accumulation dtype; ``counts`` ``(G, 7)`` int64 = numel, near_zero, nan, posinf, neginf,
below, above; ``hist`` ``(G, bins)`` int64. :func:`act_stats` wraps them in an :class:`ActStats`.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numpy as np
import torch

from .. import backends
from .._layout import acc_dtype
from ._common import (FLOAT_DTYPES, LIB, check_backend_name, check_bool, check_floating, check_int, check_real,
                      compiled)

__all__ = ["act_stats", "ActStats", "act_stats_reference"]

COUNT_COLS = ("count", "near_zero", "nan", "posinf", "neginf", "below", "above")

LIB.define("act_stats(Tensor x, int bins, float lo, float hi, float eps, bool per_channel, str backend) "
           "-> (Tensor, Tensor, Tensor)")


MAX_BINS = 1 << 24


def check_types(x, bins, lo, hi, eps, per_channel) -> None:
    """The arguments' types, in the caller's terms: what the public function checks before the op's schema
    would (its error is a schema dump; int()/float() would truncate 3.7 or parse '10')."""
    # Fast path: the exact types of the common call, tested once each (`type(v) is int` also rules out a
    # bool). ActivationStats calls this per layer per step, twice (the public function and the op's
    # kernel): the general checks below (abstract-class isinstance tests) cost several us a call. Anything
    # else -- an int lo, a numpy scalar, a wrong type -- takes the general checks, which name the argument.
    if (type(bins) is int and type(lo) is float and type(hi) is float and type(eps) is float
            and type(per_channel) is bool and isinstance(x, torch.Tensor) and x.dtype in FLOAT_DTYPES
            and 1 <= bins <= MAX_BINS):
        return
    check_floating(x, "act_stats", "x")
    check_int(bins, "act_stats", "bins", 1, MAX_BINS)
    check_real(lo, "act_stats", "lo", "a finite float")
    check_real(hi, "act_stats", "hi", "a finite float")
    check_real(eps, "act_stats", "eps", "a float >= 0")
    check_bool(per_channel, "act_stats", "per_channel")


def check_args(x, bins, lo, hi, eps, per_channel) -> None:
    """Every argument of the op (the dispatcher kernel and the fake call it; the compiled kernels repeat the
    value checks in C++)."""
    check_types(x, bins, lo, hi, eps, per_channel)
    if type(bins) is int and type(lo) is float and type(hi) is float and type(eps) is float:
        _check_values_cached(bins, lo, hi, eps, x.dtype)
    else:  # e.g. symbolic values under torch.compile: not hashable, or not worth caching
        _check_values(bins, lo, hi, eps, x.dtype)
    if per_channel and x.dim() < 2:
        raise ValueError(f"pydl.act_stats: per_channel needs x of rank >= 2 (N, C, ...), got rank {x.dim()}")


def _check_values(bins: int, lo: float, hi: float, eps: float, dtype: torch.dtype) -> None:
    """The values of the scalar arguments (their types are checked already)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"pydl.act_stats: need finite lo < hi, got lo={lo}, hi={hi}")
    check_range(bins, lo, hi, dtype)
    if not eps >= 0:
        raise ValueError(f"pydl.act_stats: eps must be a float >= 0, got {eps}")


# A training loop asks the same few (bins, lo, hi, eps, dtype) every call; check_range's numpy float32
# arithmetic alone costs a few us. Only a combination that passed is remembered (lru_cache stores no
# exception), so a bad one raises every time. 0.0 and -0.0 share an entry: they give the same verdict.
_check_values_cached = functools.lru_cache(maxsize=64)(_check_values)


def check_range(bins: int, lo: float, hi: float, dtype: torch.dtype) -> None:
    """The bin rule runs in the accumulation dtype (float32 for float16/bfloat16/float32 input): lo and hi
    must be finite and distinct there, and ``(hi - lo) * bins`` -- the largest intermediate of
    ``((x - lo) * bins) / (hi - lo)`` -- must not overflow, or values would land in the wrong bin (torch.histc
    silently drops or misplaces them then). A range that wide is refused, not binned approximately."""
    if dtype == torch.float64:
        acc_name, fmax = "float64", torch.finfo(torch.float64).max
        lo_a, hi_a = lo, hi
        span = (hi - lo) * bins
    else:
        acc_name, fmax = "float32", float(torch.finfo(torch.float32).max)
        if abs(lo) > fmax or abs(hi) > fmax:
            raise ValueError(f"pydl.act_stats: lo={lo} and hi={hi} must lie within float32's range "
                             f"(|value| <= {fmax:.4g}): {dtype} input is binned in float32")
        with np.errstate(over="ignore"):
            lo_a, hi_a = np.float32(lo), np.float32(hi)
            span = float((hi_a - lo_a) * np.float32(bins))
    if not lo_a < hi_a:
        raise ValueError(f"pydl.act_stats: lo={lo} and hi={hi} are equal in {acc_name}, the dtype {dtype} input "
                         f"is binned in; need lo < hi there")
    if not math.isfinite(span):
        raise ValueError(f"pydl.act_stats: the range [lo, hi] = [{lo}, {hi}] with bins={bins} is too wide: "
                         f"(hi - lo) * bins must stay below {acc_name}'s maximum {fmax:.4g} (the bin rule "
                         f"computes ((x - lo) * bins) / (hi - lo) in {acc_name}); narrow the range or use fewer "
                         f"bins")


# --------------------------------------------------------------------------------------------------
# reference: plain PyTorch, written to be read
# --------------------------------------------------------------------------------------------------

def act_stats_reference(x: torch.Tensor, bins: int, lo: float, hi: float, eps: float,
                        per_channel: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = acc_dtype(x.dtype)
    G = x.shape[1] if per_channel else 1
    # (G, M): one row of values per group
    M = x.numel() // G if G else 0
    rows = x.transpose(0, 1).reshape(G, M) if per_channel else x.reshape(1, M)
    v = rows.to(acc)
    finite = torch.isfinite(v)
    n = finite.sum(1)
    # two-pass mean / M2 over the finite values, in float64 and rounded at the end: the statistics of the
    # exact values (NaN mean for a group with none). float64 input whose sum overflows (values near its
    # maximum) averages pre-scaled values instead: the mean of finite values is finite.
    v64 = v.double()
    mean = torch.where(finite, v64, 0).sum(1) / n
    scaled = torch.where(finite, v64 / n.clamp_min(1)[:, None], 0).sum(1)
    mean = torch.where(torch.isfinite(mean) | (n == 0), mean, scaled)
    m2 = torch.where(finite, v64 - mean[:, None], 0).square().sum(1)
    m2 = torch.where(n > 0, m2, 0)
    mean, m2 = mean.to(acc), m2.to(acc)
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

    def __init__(self, fstats: torch.Tensor, counts: torch.Tensor, hist: torch.Tensor, bins: int, lo: float,
                 hi: float, eps: float, per_channel: bool) -> None:
        self.fstats, self.counts, self.hist_all = fstats, counts, hist
        self.bins, self.lo, self.hi, self.eps, self.per_channel = bins, lo, hi, eps, per_channel

    def _pick(self, t):
        return t if self.per_channel else t[0]

    # counts
    @property
    def count(self) -> torch.Tensor:
        return self._pick(self.counts[:, 0])

    @property
    def near_zero(self) -> torch.Tensor:
        return self._pick(self.counts[:, 1])

    @property
    def nan(self) -> torch.Tensor:
        return self._pick(self.counts[:, 2])

    @property
    def posinf(self) -> torch.Tensor:
        return self._pick(self.counts[:, 3])

    @property
    def neginf(self) -> torch.Tensor:
        return self._pick(self.counts[:, 4])

    @property
    def below(self) -> torch.Tensor:
        return self._pick(self.counts[:, 5])

    @property
    def above(self) -> torch.Tensor:
        return self._pick(self.counts[:, 6])

    @property
    def finite(self) -> torch.Tensor:
        c = self.counts
        return self._pick(c[:, 0] - c[:, 2] - c[:, 3] - c[:, 4])

    @property
    def hist(self) -> torch.Tensor:
        return self._pick(self.hist_all)

    @property
    def edges(self) -> torch.Tensor:
        """The ``bins + 1`` bin edges (as torch.linspace(lo, hi, bins + 1))."""
        return torch.linspace(self.lo, self.hi, self.bins + 1, dtype=self.fstats.dtype, device=self.fstats.device)

    # statistics of the finite values
    @property
    def mean(self) -> torch.Tensor:
        return self._pick(self.fstats[:, 0])

    @property
    def m2(self) -> torch.Tensor:
        return self._pick(self.fstats[:, 1])

    @property
    def min(self) -> torch.Tensor:
        return self._pick(self.fstats[:, 2])

    @property
    def max(self) -> torch.Tensor:
        return self._pick(self.fstats[:, 3])

    @property
    def var(self) -> torch.Tensor:
        """Population variance (divide by n), as ``torch.var(x, correction=0)``."""
        return self.m2 / self.finite.to(self.m2.dtype)

    @property
    def var_unbiased(self) -> torch.Tensor:
        """Sample variance (divide by n - 1), as ``torch.var(x)``."""
        return self.m2 / (self.finite.to(self.m2.dtype) - 1)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @property
    def std_unbiased(self) -> torch.Tensor:
        return self.var_unbiased.sqrt()

    @property
    def near_zero_frac(self) -> torch.Tensor:
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
    # types here (the op's schema would refuse them unclearly), values in the op (numpy there is no graph break)
    check_types(x, bins, lo, hi, eps, per_channel)
    name = check_backend_name(backend, "act_stats")
    bins, lo, hi, eps, per_channel = int(bins), float(lo), float(hi), float(eps), bool(per_channel)
    fstats, counts, hist = torch.ops.pydl.act_stats(x, bins, lo, hi, eps, per_channel, name)
    return ActStats(fstats, counts, hist, bins, lo, hi, eps, per_channel)
