"""Gramian angular fields (Wang & Oates, "Imaging Time-Series to Improve Classification and Imputation", 2015):
a time series drawn as an image a CNN can read.

1. Rescale each series to ``[-1, 1]`` by its own min and max: ``x~ = ((x - max) + (x - min)) / (max - min)``
   (``sample_range`` picks another interval inside ``[-1, 1]``).
2. Read each value as an angle, ``phi_i = arccos(x~_i)`` (in ``[0, pi]``): the polar encoding is bijective
   on ``[-1, 1]`` and keeps time along the radius.
3. Image ``G[i, j]``: the summation field **GASF** ``cos(phi_i + phi_j)``, or the difference field **GADF**
   ``sin(phi_i - phi_j)``. The main diagonal keeps the (rescaled) series itself (GASF: ``cos(2 phi_i) =
   2 x~_i^2 - 1``; GADF's diagonal is 0), and ``G[i, j]`` relates times ``i`` and ``j``: temporal
   correlation as a picture.

With ``cos phi = x~`` and ``sin phi = sqrt(1 - x~^2)`` (``phi`` is in ``[0, pi]``, so the sine is never
negative) no arccos is needed::

    GASF = x~ x~^T - s s^T          GADF = s x~^T - x~ s^T          s = sqrt(1 - x~^2)

which is what is computed here -- outer products, so the transform is differentiable and batched. The
square root's derivative is infinite where ``x~ = +-1``; those are exactly the points where ``x~`` is the
series' own min or max, where ``x~`` stays at ``+-1`` under any small change of the input, so ``s`` is locally
constant and its true derivative is 0. The square root is therefore written so that autograd gives 0 there
(``where`` on both sides, otherwise ``inf * 0 = nan`` would leak into every gradient).

``size``: a piecewise aggregate approximation (:mod:`pydl.transforms.paa`) to ``size`` points first, then the
rescaling (the order pyts uses: the image's extremes are then exactly ``+-1``). A constant series (max = min)
rescales to the bottom of ``sample_range``, as scikit-learn's and pyts' MinMaxScaler do.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .paa import paa

__all__ = ["METHODS", "rescale", "gaf", "gasf", "gadf", "GramianAngularField"]

METHODS = ("summation", "difference")


def _check_range(sample_range) -> Optional[Tuple[float, float]]:
    if sample_range is None:
        return None
    try:
        lo, hi = (float(v) for v in sample_range)
    except (TypeError, ValueError):
        raise TypeError(f"gaf: sample_range must be None or a pair of numbers, got {sample_range!r}") from None
    if not -1.0 <= lo < hi <= 1.0:
        raise ValueError(f"gaf: sample_range must satisfy -1 <= low < high <= 1, got {(lo, hi)}")
    return lo, hi


def rescale(x: torch.Tensor, sample_range: Tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Min-max rescaling of each series (last dimension) to ``sample_range``; a constant series goes to
    ``sample_range[0]``."""
    lo, hi = _check_range(sample_range)
    mn = x.amin(-1, keepdim=True)
    rng = x.amax(-1, keepdim=True) - mn
    ok = rng > 0
    unit = torch.where(ok, (x - mn) / torch.where(ok, rng, 1), torch.zeros_like(x))
    return lo + (hi - lo) * unit


def _safe_sqrt(u: torch.Tensor) -> torch.Tensor:
    """sqrt(u) for u >= 0 whose gradient is 0 (not inf) at u = 0 (see the module docstring for why 0 is the
    true derivative here); the inner ``where`` keeps the unused branch finite so no nan reaches autograd."""
    pos = u > 0
    return torch.where(pos, torch.where(pos, u, 1).sqrt(), torch.zeros_like(u))


def gaf(x: torch.Tensor, method: str = "difference", size: Optional[int] = None,
        sample_range: Optional[Tuple[float, float]] = (-1.0, 1.0)) -> torch.Tensor:
    """Gramian angular field of a batch of series: ``(N, T) -> (N, S, S)`` or ``(N, C, T) -> (N, C, S, S)``,
    ``S = size`` (PAA first) or ``T``. ``method``: ``"difference"`` (GADF) or ``"summation"`` (GASF).
    ``sample_range=None`` skips the rescaling: the values must already lie in ``[-1, 1]``."""
    if method not in METHODS:
        raise ValueError(f"gaf: method must be one of {METHODS}, got {method!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() not in (2, 3):
        raise ValueError(f"gaf: x must be a floating (N, T) or (N, C, T) batch of series, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                         f"{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)}")
    if x.shape[-1] < 1:
        raise ValueError("gaf: the series are empty (T = 0)")
    sample_range = _check_range(sample_range)
    if size is not None:
        x = paa(x, size)
    if sample_range is None:
        # a value check is a host sync, but this is the caller's promise being verified, once per call
        if x.numel() and (bool((x < -1).any()) or bool((x > 1).any()) or bool(x.isnan().any())):
            raise ValueError("gaf: with sample_range=None every value must lie in [-1, 1]")
        c = x
    else:
        # rounding can put the extremes a hair outside [-1, 1]; the clamp passes gradients inside it
        c = rescale(x, sample_range).clamp(-1.0, 1.0)
    s = _safe_sqrt(1 - c * c)
    if method == "summation":
        return c[..., :, None] * c[..., None, :] - s[..., :, None] * s[..., None, :]
    return s[..., :, None] * c[..., None, :] - c[..., :, None] * s[..., None, :]


def gasf(x: torch.Tensor, size: Optional[int] = None, sample_range=(-1.0, 1.0)) -> torch.Tensor:
    """The summation field: :func:`gaf` with ``method="summation"``."""
    return gaf(x, "summation", size, sample_range)


def gadf(x: torch.Tensor, size: Optional[int] = None, sample_range=(-1.0, 1.0)) -> torch.Tensor:
    """The difference field: :func:`gaf` with ``method="difference"``."""
    return gaf(x, "difference", size, sample_range)


class GramianAngularField(nn.Module):
    """:func:`gaf` as a module (no parameters), e.g. the first stage of a model that takes raw series.
    ``methods``: one method or a tuple of them; with several, the fields are stacked as channels
    (``(N, T) -> (N, len(methods), S, S)``; ``(N, C, T) -> (N, C * len(methods), S, S)``)."""

    def __init__(self, methods=("difference",), size: Optional[int] = None, sample_range=(-1.0, 1.0)):
        super().__init__()
        methods = (methods,) if isinstance(methods, str) else tuple(methods)
        if not methods or any(m not in METHODS for m in methods):
            raise ValueError(f"GramianAngularField: methods must be a non-empty selection of {METHODS}, "
                             f"got {methods!r}")
        _check_range(sample_range)
        self.methods, self.size, self.sample_range = methods, size, sample_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        imgs = [gaf(x, m, self.size, self.sample_range) for m in self.methods]
        if x.dim() == 2:
            return torch.stack(imgs, 1)
        return torch.cat(imgs, 1) if len(imgs) > 1 else imgs[0]

    def extra_repr(self) -> str:
        return f"methods={self.methods}, size={self.size}, sample_range={self.sample_range}"
