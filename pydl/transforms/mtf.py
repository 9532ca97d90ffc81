"""Markov transition field (Wang & Oates, "Encoding Time Series as Images for Visual Inspection and
Classification Using Tiled Convolutional Neural Networks", 2015): the series' dynamics as an image, the
companion of the Gramian angular fields.

1. Quantise each series into ``Q`` bins ``q_t`` (``"quantile"``: equal counts, edges at the series' own
   quantiles; ``"uniform"``: equal widths between its min and max). A value on an edge goes to the lower
   bin (``searchsorted(..., side="left")``), as pyts does.
2. The first-order Markov transition matrix ``W[a, b]`` = share of the steps leaving bin ``a`` that land in
   bin ``b`` (a row with no departures stays 0).
3. ``M[i, j] = W[q_i, q_j]``: how likely the value at time ``i`` is to be followed by one in the bin of the
   value at time ``j`` -- a ``T x T`` image whose diagonal is each bin's self-transition probability.

With one-hot bins ``O`` (``T x Q``) all three steps are matmuls: ``W`` is the row-normalised ``O[:-1]^T
O[1:]`` and ``M = O W O^T``. The optional reduction to ``size x size`` averages ``M`` over blocks of the PAA
segments (:mod:`pydl.transforms.paa`), which is ``P^T M P = (P^T O) W (P^T O)^T`` -- computed in that order,
so the ``T x T`` field is never built.

Not differentiable: the binning is a step function of the input, so the field is piecewise constant and its
derivative is zero almost everywhere; the result carries no gradient (say so explicitly with ``detach`` where
it joins a differentiable path).
"""
from __future__ import annotations

from typing import Optional

import torch

from .paa import check_size, paa_matrix

__all__ = ["STRATEGIES", "markov_transition_field", "bin_series"]

STRATEGIES = ("quantile", "uniform")


def bin_series(x: torch.Tensor, n_bins: int, strategy: str = "quantile") -> torch.Tensor:
    """Bin index in ``[0, n_bins)`` of every value of ``x`` (..., T), per series (last dimension)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"markov_transition_field: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"markov_transition_field: n_bins must be an int >= 2, got {n_bins!r}")
    frac = torch.linspace(0, 1, n_bins + 1, dtype=x.dtype, device=x.device)[1:-1]
    if strategy == "quantile":
        # torch.quantile's default "linear" interpolation is numpy.percentile's default
        edges = torch.quantile(x, frac, dim=-1).movedim(0, -1)                # (..., n_bins - 1)
    else:
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        edges = lo + (hi - lo) * frac
    return torch.searchsorted(edges.contiguous(), x.contiguous(), side="left")


def markov_transition_field(x: torch.Tensor, n_bins: int = 8, size: Optional[int] = None,
                            strategy: str = "quantile") -> torch.Tensor:
    """Markov transition field of a batch of series: ``(N, T) -> (N, S, S)`` or ``(N, C, T) -> (N, C, S, S)``,
    ``S = size`` (block means over PAA segments) or ``T``. Values in [0, 1]; no gradient (see the module
    docstring)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() not in (2, 3):
        raise ValueError(f"markov_transition_field: x must be a floating (N, T) or (N, C, T) batch of series, "
                         f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    T = x.shape[-1]
    if T < 2:
        raise ValueError(f"markov_transition_field: a series needs at least 2 points to have a transition, "
                         f"got T = {T}")
    S = T if size is None else check_size(T, size, "markov_transition_field")
    x = x.detach()
    q = bin_series(x, n_bins, strategy)
    onehot = torch.nn.functional.one_hot(q, n_bins).to(x.dtype)             # (..., T, Q)
    counts = onehot[..., :-1, :].transpose(-1, -2) @ onehot[..., 1:, :]      # (..., Q, Q)
    rows = counts.sum(-1, keepdim=True)
    w = counts / torch.where(rows > 0, rows, torch.ones_like(rows))
    po = paa_matrix(T, S, x.dtype, x.device).t() @ onehot if S != T else onehot   # (..., S, Q)
    return po @ w @ po.transpose(-1, -2)
