"""GeneralRelu (fastai): leaky ReLU, shifted down by ``sub``, clamped at ``maxv``.

Kept as a plain-PyTorch module: on its own it is one elementwise op that torch already does at memory speed.
Its value in pydl is as a *fused epilogue* of conv2d and batch_norm (``act="general_relu"``), which
pydl.nn.ConvBnAct and the demo's model use.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from ..ops import _activation


class GeneralRelu(nn.Module):
    def __init__(self, leak: float = None, sub: float = None, maxv: float = None):
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def act_params(self):
        """(act, leak, sub, maxv) for an op's fused epilogue."""
        return ("general_relu",) + _activation.params("general_relu", self.leak, self.sub, self.maxv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, leak, sub, maxv = self.act_params()
        return _activation.apply(x, "general_relu", leak, sub, maxv)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"
