"""Fused epilogue activations for Triton kernels (contract: pydl/ops/_activation.py).

ACT is a constexpr: 0 none, 1 relu, 2 general_relu (leaky_relu(z, leak) - sub, clamped above at maxv), so the
branches vanish at compile time.
"""
import triton.language as tl

from ._jit import jit

ACT_CODES = {"none": 0, "relu": 1, "general_relu": 2}


@jit
def act_forward(z, leak, sub, maxv, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * leak) - sub
        z = tl.minimum(z, maxv)
    return z


@jit
def act_backward(dy, z, leak, sub, maxv, ACT: tl.constexpr):
    if ACT == 1:
        dy = tl.where(z > 0, dy, 0.0)
    elif ACT == 2:
        y = tl.where(z > 0, z, z * leak) - sub
        dy = tl.where(y <= maxv, tl.where(z > 0, dy, dy * leak), 0.0)
    return dy
