"""(count, mean, M2) of a block and their pairwise merge, safe at the edge of the float range.

act_stats and batch_norm reduce a tensor to per-group statistics the same way: each block's own mean and M2
(two passes over registers), then Chan, Golub & LeVeque's merge of two sets

    n = na + nb,  delta = mb - ma,  mean = ma + delta * nb / n,  M2 = M2a + M2b + delta^2 * na * nb / n

Written naively, both steps turn large but finite data into NaN, where torch gives inf or a finite value:

* a block's *sum* overflows long before its *mean* does (1024 values of 1e36 sum past float32's 3.4e38);
  the mean is then inf, and ``v - inf`` makes every deviation -inf, M2 inf, the next merge ``inf - inf``;
* ``delta`` of two finite means of opposite sign overflows (3e38 - -3e38), and ``ma + inf * w`` is inf
  where the true mean lies between ma and mb;
* ``delta^2 * na * (nb / n)`` is ``inf * 0`` = NaN when one side is empty (na == 0 or nb == 0) and delta^2
  overflowed.

The helpers below avoid all three: a block mean that falls back to summing pre-scaled values, a merge that
falls back to the convex combination ``ma * (1 - w) + mb * w`` (bounded by the two means: it cannot
overflow), and an empty side that leaves the other side's statistics untouched. An M2 that really exceeds
the accumulation dtype's range (var of 1e30-scale float32 data) still becomes inf -- as torch's var does.
"""
from __future__ import annotations

import triton.language as tl

from ._jit import jit


@jit
def block_mean(v, cnt):
    """Mean over axis 0 of ``v`` (masked lanes already 0) with ``cnt`` values, without overflowing when only
    the sum would: the fallback sums ``v * (1 / cnt)``, one rounding more per value, only where it is needed
    (so ordinary data keeps the exactly rounded ``sum / cnt``)."""
    m = tl.sum(v, axis=0) / cnt
    scaled = tl.sum(v * (1.0 / cnt), axis=0)
    return tl.where(m - m == 0, m, scaled)  # m - m is NaN for +-inf and NaN, 0 otherwise


@jit
def merge(n, mean, m2, nb, mean_b, m2_b):
    """Chan's merge of (nb, mean_b, m2_b) into (n, mean, m2); counts may be int or float. Returns
    (n + nb, mean, m2). An empty side changes nothing; see the module docstring for the overflow cases."""
    nf = n.to(mean.dtype)
    nn = nf + nb.to(mean.dtype)
    w = nb.to(mean.dtype) / tl.maximum(nn, 1.0)
    delta = mean_b - mean
    merged_mean = tl.where(delta - delta == 0, mean + delta * w, mean * (1.0 - w) + mean_b * w)
    merged_m2 = m2 + m2_b + delta * delta * (nf * w)
    new_mean = tl.where(nb > 0, tl.where(n > 0, merged_mean, mean_b), mean)
    new_m2 = tl.where(nb > 0, tl.where(n > 0, merged_m2, m2_b), m2)
    return n + nb, new_mean, new_m2
