"""What every pydl op module shares: the ``pydl`` torch.library namespace and argument checks.

Each op lives in its own module (pydl/ops/<op>.py) with the same shape:
  1. the schema, defined once in the ``pydl`` namespace (``torch.ops.pydl.<op>``);
  2. the per-backend implementations: ``reference`` (plain PyTorch), ``cpu`` / ``cuda`` (the compiled
     extensions' ``torch.ops.pydl_cpu.<op>`` / ``torch.ops.pydl_cuda.<op>``), ``triton`` (pydl.kernels.<op>);
  3. one dispatcher kernel for the CPU and CUDA keys that checks the arguments and calls the chosen backend;
  4. a fake (meta) implementation, so torch.compile and opcheck can trace it;
  5. autograd, where the op has a backward;
  6. the public Python function, which turns ``backend=None`` into the current default.
"""
from __future__ import annotations

import torch

LIB = torch.library.Library("pydl", "FRAGMENT")

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating(t, op: str, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pydl.{op}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"pydl.{op}: {arg} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compiled(namespace: str, op: str):
    """Loader for a compiled backend's kernel: ``torch.ops.<namespace>.<op>`` once its library is loaded.
    (The build itself happens in pydl.backends.available(), which runs first and records failures.)"""

    def load():
        return getattr(getattr(torch.ops, namespace), op).default

    return load


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
