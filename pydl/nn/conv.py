"""Convolution modules: ``Conv2d`` (drop-in for torch.nn.Conv2d), ``ConvBnAct`` and the inference-time fold.

* :class:`Conv2d` *is* a ``torch.nn.Conv2d`` (subclass): the same constructor, parameters, ``state_dict``
  keys, ``repr`` and ``isinstance`` answers; only ``forward`` runs :func:`pydl.conv2d`. Two extra
  attributes: ``backend`` (None = the current default) and ``act`` -- the fused epilogue activation
  (``"none"`` for a plain conv; :func:`fuse_conv_bn_act` sets it).
* :class:`ConvBnAct`: conv (no bias) -> BatchNorm2d -> activation, the block of a ResNet/fastai model. In
  training the conv runs, then BN with the activation fused into pydl's batch_norm kernel (BN needs the
  batch's statistics, which only exist after the conv, so BN cannot go into the conv's epilogue). In eval
  mode BN is an affine map per channel, so it is *folded* into the conv's weight and bias and
  the whole block is ONE conv with the bias + activation fused into its epilogue.
* :func:`fold_conv_bn` / :func:`fuse_conv_bn_act` / :func:`fuse_model`: the same fold as standalone modules
  (for deployment): weights are copied, the source modules are left untouched.

The fold: eval BN computes ``gamma * (z - mean) / sqrt(var + eps) + beta`` per channel. With
``s = gamma / sqrt(var + eps)`` and ``z = w * x + b`` that is ``(s*w) * x + (s*(b - mean) + beta)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn as tnn

from ..ops import _activation
from ..ops.conv2d import conv2d as _conv2d
from .activation import GeneralRelu
from .batchnorm import BatchNorm2d
from .convert import register

__all__ = ["Conv2d", "ConvBnAct", "fold_conv_bn", "fuse_conv_bn_act", "fuse_model"]


def _copy_module_state(src: tnn.Module, dst: tnn.Module) -> None:
    """Make dst a twin of src: same attributes, and the SAME parameter/buffer tensors (not copies) -- so an
    optimizer built on the old module keeps training the new one. Dicts are copied so that adding a
    parameter to one module later does not add it to the other."""
    for k, v in src.__dict__.items():
        dst.__dict__[k] = v.copy() if isinstance(v, (dict, OrderedDict)) else v


def _act_of(module: Optional[tnn.Module]) -> Tuple[str, float, float, float]:
    """(act, leak, sub, maxv) of an activation module, for the fused epilogue."""
    if module is None or isinstance(module, tnn.Identity):
        return "none", 0.0, 0.0, math.inf
    if isinstance(module, tnn.ReLU):
        return "relu", 0.0, 0.0, math.inf
    if isinstance(module, GeneralRelu):
        return module.act_params()
    raise TypeError(f"pydl: cannot fuse activation {type(module).__name__}; supported: ReLU, GeneralRelu, Identity")


def _act_module(act: str, leak: float, sub: float, maxv: float) -> tnn.Module:
    if act == "none":
        return tnn.Identity()
    if act == "relu":
        return tnn.ReLU()
    return GeneralRelu(leak, sub, None if maxv == math.inf else maxv)


class Conv2d(tnn.Conv2d):
    """torch.nn.Conv2d running pydl's conv2d kernels (``backend``: None = current default)."""

    def __init__(self, *args, algo: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend: Optional[str] = None
        # CPU algorithm for this layer ("auto", "direct", "winograd"); None = the current pydl.conv2d_algo.
        # Checked when the layer runs (the attribute may be set later, as backend is).
        self.algo: Optional[str] = algo
        # fused epilogue (act, leak, sub, maxv); "none" = a plain conv, as torch.nn.Conv2d
        self.act: Tuple[str, float, float, float] = ("none", 0.0, 0.0, math.inf)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        # torch.nn.Conv2d's hook for subclasses and parametrizations (weight norm...): route it to pydl too
        act, leak, sub, maxv = self.act
        return _conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.padding_mode,
                       act=act, leak=leak, sub=sub, maxv=maxv, backend=self.backend, algo=getattr(self, "algo", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)

    @classmethod
    def from_torch(cls, m: tnn.Conv2d) -> "Conv2d":
        new = cls.__new__(cls)
        _copy_module_state(m, new)
        new.backend = None
        new.algo = None
        new.act = ("none", 0.0, 0.0, math.inf)
        return new

    def to_torch(self) -> tnn.Module:
        """A torch.nn.Conv2d sharing the parameters; a fused activation becomes a following module."""
        new = tnn.Conv2d.__new__(tnn.Conv2d)
        _copy_module_state(self, new)
        for k in ("backend", "algo", "act"):
            new.__dict__.pop(k, None)
        if self.act[0] == "none":
            return new
        return tnn.Sequential(new, _act_module(*self.act))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.act[0] != "none":
            s += f", act={self.act[0]}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        if getattr(self, "algo", None) is not None:
            s += f", algo={self.algo!r}"
        return s


register(tnn.Conv2d, Conv2d)


def fold_conv_bn(conv: tnn.Conv2d, bn: tnn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv equal to ``bn(conv(x))`` with bn in eval mode (running statistics).
    Computed in float64 and cast back, so the fold itself adds no rounding beyond the final cast."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("pydl.fold_conv_bn: the BatchNorm has no running statistics to fold")
    w = conv.weight
    var = bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    shift = (b - bn.running_mean.double()) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return (w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype), shift.to(w.dtype)


def fuse_conv_bn_act(conv: tnn.Conv2d, bn: Optional[tnn.BatchNorm2d] = None,
                     act: Optional[tnn.Module] = None) -> Conv2d:
    """One pydl Conv2d (new parameters) computing ``act(bn(conv(x)))`` for inference: BN folded into the
    weight and bias, the activation fused into the kernel's epilogue."""
    with torch.no_grad():
        w, b = fold_conv_bn(conv, bn) if bn is not None else (
            conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone())
    out = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                 conv.dilation, conv.groups, bias=b is not None, padding_mode=conv.padding_mode,
                 device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    out.act = _act_of(act)
    out.backend = getattr(conv, "backend", None)
    out.algo = getattr(conv, "algo", None)
    return out.eval()


def fuse_model(model: tnn.Module) -> tnn.Module:
    """Inference-time fold, in place: inside every nn.Sequential, each run Conv2d [BatchNorm2d] [ReLU |
    GeneralRelu] becomes one fused pydl Conv2d (the folded-away modules become Identity, so indices and
    state_dict prefixes of the other children stay where they were). ConvBnAct blocks fold themselves in
    eval mode already and are left as they are."""
    for child in model.children():
        fuse_model(child)
    if not isinstance(model, tnn.Sequential):
        return model
    names = list(model._modules.keys())
    i = 0
    while i < len(names):
        m = model._modules[names[i]]
        if isinstance(m, tnn.Conv2d) and (type(m) is tnn.Conv2d or (isinstance(m, Conv2d) and m.act[0] == "none")):
            j = i + 1
            bn = act = None
            if j < len(names) and isinstance(model._modules[names[j]], tnn.BatchNorm2d) \
                    and model._modules[names[j]].track_running_stats:
                bn = model._modules[names[j]]
                j += 1
            if j < len(names) and isinstance(model._modules[names[j]], (tnn.ReLU, GeneralRelu)):
                act = model._modules[names[j]]
                j += 1
            if bn is not None or act is not None:
                model._modules[names[i]] = fuse_conv_bn_act(m, bn, act)
                for k in range(i + 1, j):
                    model._modules[names[k]] = tnn.Identity()
            i = j
        else:
            i += 1
    return model


class ConvBnAct(tnn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation. ``act``: "relu" (default), "general_relu" (with
    ``leak``, ``sub``, ``maxv``), "none", or an nn.ReLU / GeneralRelu / Identity module. ``padding``
    defaults to ``kernel_size // 2`` ("same" for odd kernels at stride 1). In eval mode the block runs as
    ONE conv: BN folded into the weight and bias, the activation fused into the epilogue."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, act="relu", leak: Optional[float] = None, sub: Optional[float] = None,
                 maxv: Optional[float] = None, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        if padding is None:
            k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
            d = dilation if isinstance(dilation, int) else dilation[0]
            padding = d * (k - 1) // 2
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False,
                           device=device, dtype=dtype)
        if isinstance(act, tnn.Module):
            self.act = _act_of(act)
        else:
            _activation.check_act(act, *(_activation.params(act, leak, sub, maxv) if act != "none"
                                         else (0.0, 0.0, math.inf)), "ConvBnAct")
            self.act = (act,) + (_activation.params(act, leak, sub, maxv) if act != "none" else (0.0, 0.0, math.inf))
        a, lk, sb, mx = self.act
        # pydl's BatchNorm2d fuses the activation into its own kernel (training: conv, then BN+act)
        self.bn = BatchNorm2d(out_channels, eps=eps, momentum=momentum, device=device, dtype=dtype, act=a,
                              leak=lk, sub=sb, maxv=None if mx == math.inf else mx)

    @property
    def backend(self) -> Optional[str]:
        return self.conv.backend

    @backend.setter
    def backend(self, name: Optional[str]) -> None:
        self.conv.backend = name
        if hasattr(self.bn, "backend"):
            self.bn.backend = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act, leak, sub, maxv = self.act
        if self.training or not self.bn.track_running_stats:
            return self.bn(self.conv(x))
        w, b = fold_conv_bn(self.conv, self.bn)
        c = self.conv
        return _conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups, c.padding_mode, act=act, leak=leak,
                       sub=sub, maxv=maxv, backend=c.backend, algo=c.algo)

    def extra_repr(self) -> str:
        return f"act={self.act[0]}"
