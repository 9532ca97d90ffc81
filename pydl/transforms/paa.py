"""Piecewise aggregate approximation (PAA; Keogh et al. 2001, Yi & Faloutsos 2000): a series of length ``T``
cut into ``size`` consecutive segments, each replaced by its mean. It shortens a series while keeping its
trend, which is how Wang & Oates keep Gramian angular fields (``T x T`` images) small.

Segment ``s`` covers ``[floor(s*T/size), floor((s+1)*T/size))`` -- the boundaries of
``numpy.linspace(0, T, size + 1)`` cast to int, the same ones pyts uses, so segment lengths differ by at most
one when ``size`` does not divide ``T``. The means are one matmul with a ``(T, size)`` averaging matrix:
differentiable, batched over any leading dimensions, and the same on every device.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["segments", "paa_matrix", "paa"]


def check_size(length: int, size, who: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{who}: size must be an int, got {type(size).__name__}")
    if not 1 <= size <= length:
        raise ValueError(f"{who}: size must be between 1 and the series length {length}, got {size}")
    return int(size)


def segments(length: int, size: int):
    """The ``size`` segments of a series of ``length`` points as (start, end) index arrays, end exclusive."""
    size = check_size(length, size, "segments")
    bounds = np.linspace(0, length, size + 1).astype(np.int64)
    return bounds[:-1], bounds[1:]


def paa_matrix(length: int, size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The ``(length, size)`` matrix whose column ``s`` is ``1/len(s)`` on segment ``s`` and 0 elsewhere."""
    start, end = segments(length, size)
    t = np.arange(length)[:, None]
    m = ((t >= start) & (t < end)) / (end - start)
    return torch.as_tensor(m, dtype=dtype, device=device)


def paa(x: torch.Tensor, size: int) -> torch.Tensor:
    """Piecewise aggregate approximation along the last dimension of ``x`` (``(..., T) -> (..., size)``)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"paa: x must be a floating tensor (..., T), got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    T = x.shape[-1]
    size = check_size(T, size, "paa")
    if size == T:
        return x
    return x @ paa_matrix(T, size, x.dtype, x.device)
