"""Winograd F(4x4, 3x3) in plain torch: the prototype that settles the transform matrices, and the error bound
the parity tests derive their tolerance from (used by tests/test_conv2d_winograd.py and
benchmarks/winograd_error.py; the C++ kernel is csrc/cpu/conv2d/winograd.cpp).

The algorithm (Lavin & Gray 2016). Cut the output into 4x4 tiles; each reads a 6x6 input patch d. With
the filter g (3x3) of one (out, in) channel pair:

    Y = A^T [ (G g G^T)  *  (B^T d B) ] A        (* elementwise; Y is the 4x4 output tile)

U = G g G^T and V = B^T d B are 6x6 "transformed" filter and input; summing over input channels commutes
with A^T . A, so the 36 positions of the tile are 36 independent matrix products over the channels
(M[p] = sum_c V[p, tile, c] U[p, c, k]): 36 multiplies per 16 outputs instead of 16 * 9 = 144.

The matrices are those of the Chinese-remainder construction at the points 0, +-1, +-2 and infinity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BT = [[4, 0, -5, 0, 1, 0],
      [0, -4, -4, 1, 1, 0],
      [0, 4, -4, -1, 1, 0],
      [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0],
      [0, 4, 0, -5, 0, 1]]
G = [[1 / 4, 0, 0],
     [-1 / 6, -1 / 6, -1 / 6],
     [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6],
     [1 / 24, -1 / 12, 1 / 6],
     [0, 0, 1]]
AT = [[1, 1, 1, 1, 1, 0],
      [0, 1, -1, 2, -2, 0],
      [0, 1, 1, 4, 4, 0],
      [0, 1, -1, 8, -8, 1]]

# Rounding steps on the longest path from an input to an output, beyond the sum over channels: the input
# transform (two passes of <= 4 terms: 4 + 4), the filter transform (two passes of 3 terms with inexact
# constants 1/6, 1/12, 1/24: (3 + 1) + (3 + 1), and the rounding of the finished U), the elementwise
# product (1), the output transform (two passes of <= 5 terms: 5 + 5), the bias (1). See winograd_bound.
TRANSFORM_ROUNDINGS = 8 + 9 + 1 + 10 + 1


def _mats(dtype, absolute=False):
    mats = [torch.tensor(m, dtype=dtype) for m in (BT, G, AT)]
    return [m.abs() for m in mats] if absolute else mats


def winograd_conv(x, w, padding=1, absolute=False):
    """F(4x4, 3x3) convolution of NCHW x with (K, C, 3, 3) w at stride 1, in x's dtype (float64 for the
    prototype). ``absolute=True`` runs it with |B^T|, |G|, |A^T| on whatever x, w it is given -- the
    quantity the error bound is written in (see winograd_bound)."""
    bt, g, at = _mats(x.dtype, absolute)
    N, _, H, W = x.shape
    K = w.shape[0]
    Ho, Wo = H + 2 * padding - 2, W + 2 * padding - 2
    th, tw = -(-Ho // 4), -(-Wo // 4)
    # zero halo: the padding, plus whatever the last tiles read beyond the image
    xp = F.pad(x, (padding, 4 * tw + 2 - W - padding, padding, 4 * th + 2 - H - padding))
    d = xp.unfold(2, 6, 4).unfold(3, 6, 4)                       # (N, C, th, tw, 6, 6)
    V = bt @ d @ bt.T                                            # (N, C, th, tw, 6, 6)
    U = g @ w @ g.T                                              # (K, C, 6, 6)
    M = torch.einsum("nctwpq,kcpq->nktwpq", V, U)                # the 36 products, summed over c
    Y = at @ M @ at.T                                            # (N, K, th, tw, 4, 4)
    Y = Y.permute(0, 1, 2, 4, 3, 5).reshape(N, K, 4 * th, 4 * tw)
    return Y[:, :, :Ho, :Wo]


def unit_roundoff(dtype) -> float:
    return torch.finfo(dtype).eps / 2


def winograd_bound(x, w, b=None, padding=1):
    """Elementwise bound on |winograd(x, w) + b - exact| for a kernel computing in x's dtype.

    Standard forward error analysis (Higham, ch. 3): a sum of n products computed in any order, with or
    without FMA, is off by at most gamma_n * (the same sum of |terms|), gamma_n = n*u / (1 - n*u), u the unit
    roundoff. Carried through the three transforms and the sum over C channels, every rounding is relative to
    the *absolute* Winograd computation (the algorithm run on |x|, |w| with |B^T|, |G|, |A^T|), so

        |err| <= gamma_{C + TRANSFORM_ROUNDINGS} * (winograd_abs(|x|, |w|) + |b|)

    with no assumption on the data or the summation order (so a test using it cannot fail by bad luck).
    The absolute computation is itself a bounded multiple of the direct one, |x| (*) |w|: the transforms mix
    the 6x6 patch with coefficients up to 8 * 5 * 4 (A^T, B^T) and 1/4 (G), which is why Winograd's error is
    1-2 orders of magnitude above the direct conv's -- measured on ResNet-like data in
    benchmarks/winograd_error.py. It grows linearly with C in the worst case (like any dot product) and like
    sqrt(C) on typical data."""
    x64, w64 = x.double().abs(), w.double().abs()
    s = winograd_conv(x64, w64, padding, absolute=True)
    if b is not None:
        s = s + b.double().abs().view(1, -1, 1, 1)
    n = x.shape[1] + TRANSFORM_ROUNDINGS
    u = unit_roundoff(x.dtype)
    return (n * u / (1 - n * u)) * s
