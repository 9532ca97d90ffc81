"""The activations pydl fuses into kernel epilogues (conv2d, batch_norm), with one definition of their math.

``act`` is a string in every op schema: ``"none"``, ``"relu"`` or ``"general_relu"`` -- fastai's GeneralRelu:

    y = leaky_relu(z, leak) - sub, then clamped from above at maxv

``relu`` is general_relu with leak = 0, sub = 0, maxv = +inf. The gradient is the one autograd gives for that
composite in torch: dz = dy * (z > 0 ? 1 : leak) * (leaky_relu(z, leak) - sub <= maxv ? 1 : 0) (torch's
clamp passes the gradient where the input equals the bound).

The same formulas live in csrc/activation.h (C++/CUDA) and kernels/_activation.py (Triton).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "general_relu")


def check_act(act: str, leak: float, sub: float, maxv: float, op: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"pydl.{op}: act must be one of {ACTIVATIONS}, got {act!r}")
    if act == "general_relu" and not (leak >= 0 and math.isfinite(sub) and not math.isnan(maxv)):
        raise ValueError(f"pydl.{op}: general_relu needs leak >= 0, finite sub and a maxv (inf for none), "
                         f"got leak={leak}, sub={sub}, maxv={maxv}")


def params(act: str, leak: Optional[float] = None, sub: Optional[float] = None,
           maxv: Optional[float] = None) -> Tuple[float, float, float]:
    """Normalise GeneralRelu-style arguments (None = off) to the (leak, sub, maxv) floats of the schemas."""
    if act == "relu":
        return 0.0, 0.0, math.inf
    return float(leak or 0.0), float(sub or 0.0), math.inf if maxv is None else float(maxv)


def apply(z: torch.Tensor, act: str, leak: float, sub: float, maxv: float) -> torch.Tensor:
    """Reference forward (plain torch ops)."""
    if act == "none":
        return z
    if act == "relu":
        return F.relu(z)
    y = F.leaky_relu(z, leak) if leak else F.relu(z)
    if sub:
        y = y - sub
    if maxv != math.inf:
        y = y.clamp_max(maxv)
    return y


def grad(dy: torch.Tensor, z: torch.Tensor, act: str, leak: float, sub: float, maxv: float) -> torch.Tensor:
    """Reference backward: dL/dz from dL/dy and the pre-activation z."""
    if act == "none":
        return dy
    # slope built in dy's dtype: torch.where of two Python floats would give float32 (leak rounded to
    # float32, a ~1e-9 relative error in a float64 gradient)
    one = torch.ones((), dtype=dy.dtype, device=dy.device)
    if act == "relu":  # torch's threshold_backward stops it only where z <= 0: a NaN z passes the gradient
        slope = torch.where(z <= 0, one * 0.0, one)
    else:
        slope = torch.where(z > 0, one, one * leak)
    g = dy * slope
    if act == "general_relu" and maxv != math.inf:
        y_unclamped = (F.leaky_relu(z, leak) if leak else F.relu(z)) - sub
        g = torch.where(y_unclamped <= maxv, g, torch.zeros((), dtype=g.dtype, device=g.device))
    return g
