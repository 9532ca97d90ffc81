"""Memory layout and dtype rules that every backend of an op must agree on.

A leaf module (it imports torch only): the ops (pydl/ops/) and the Triton kernels (kernels/) both use these,
and the kernels sit below the ops (docs/ARCHITECTURE.md, "Layers and imports"), so the rules live under both.
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_dense(t: torch.Tensor) -> bool:
    """True if ``t``'s elements fill one contiguous block of memory with no overlap, in any dimension order
    (contiguous, channels_last, transposed...). Whole-tensor reductions can then read that block as flat."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def is_channels_last(x: torch.Tensor) -> bool:
    """True if x is a dense (N, spatial..., C) array: channel fastest. 2-D (N, C) counts (rows of channels)."""
    if x.dim() == 2:
        return x.is_contiguous()
    if x.dim() < 3 or x.is_contiguous():
        return False  # when both layouts fit (C == 1, or spatial all 1) the contiguous reading wins
    return x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def dense_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself if it is contiguous or channels-last dense; a contiguous copy otherwise."""
    return x if (x.is_contiguous() or is_channels_last(x)) else x.contiguous()


def channel_count(x: torch.Tensor) -> int:
    """Values per channel: N * prod(spatial)."""
    n = x.shape[0]
    for d in x.shape[2:]:
        n = n * d
    return n


def out_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last output for a channels_last input (one that is not also plainly contiguous), else NCHW.
    Every backend and the fake use this one rule, so the output strides agree everywhere."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
