"""Fused epilogue activations for Triton kernels (contract: pydl/ops/_activation.py).

ACT is a constexpr: 0 none, 1 relu, 2 general_relu (leaky_relu(z, leak) - sub, clamped above at maxv), so the
branches vanish at compile time.
"""
import triton.language as tl

from ._jit import jit

ACT_CODES = {"none": 0, "relu": 1, "general_relu": 2}


@jit
def act_forward(z, leak, sub, maxv, ACT: tl.constexpr):
    # NaN in, NaN out, as torch: each select falls through to z when its comparison (false for NaN) fails
    # (tl.maximum / tl.minimum would return the other operand on a GPU, turning NaN into 0 or maxv)
    if ACT == 1:
        z = tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        z = tl.where(z < 0, z * leak, z) - sub
        z = tl.where(z > maxv, maxv, z)
    return z


@jit
def act_backward(dy, z, leak, sub, maxv, ACT: tl.constexpr):
    # torch's formulas (see csrc/activation.h): relu stops the gradient only where z <= 0 (a NaN passes it);
    # the clamp, when there is one (maxv finite: inf - inf is NaN), stops it at a NaN
    if ACT == 1:
        dy = tl.where(z <= 0, 0.0, dy)
    elif ACT == 2:
        y = tl.where(z < 0, z * leak, z) - sub
        stop = tl.where(y != y, maxv - maxv == 0, y > maxv)
        dy = tl.where(stop, 0.0, tl.where(z > 0, dy, dy * leak))
    return dy
