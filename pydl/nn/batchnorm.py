"""``pydl.nn.BatchNorm1d/2d/3d``: torch's BatchNorm modules running pydl's batch_norm kernels.

They *subclass* torch's classes and replace only ``forward``. So the constructor (num_features, eps, momentum,
affine, track_running_stats, device, dtype), the parameters, the buffers, ``state_dict`` keys, loading of old
checkpoints without ``num_batches_tracked``, ``reset_parameters`` and ``repr`` are torch's own -- identical by
construction, not by imitation -- and ``isinstance(m, torch.nn.BatchNorm2d)`` stays true for code that asks
(weight-decay filters, conv-bn folding). ``pydl.convert`` still matches exact types, so it never converts a
pydl module twice.

Extras, after torch's arguments: ``act`` / ``leak`` / ``sub`` / ``maxv`` fuse an activation into the kernel's
output (``"relu"`` or fastai's ``"general_relu"``); ``backend`` picks the kernels (None = current default).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as tnn

from ..ops import _activation
from ..ops.batch_norm import batch_norm, eval_forward
from .convert import register

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class PydlBatchNorm:
    """The forward and the conversion helpers shared by the three classes (mixed in before torch's class)."""

    _torch_cls = None

    def _pydl_init(self, act, leak, sub, maxv, backend):
        _activation.check_act(act, *_activation.params(act, leak, sub, maxv), type(self).__name__)
        self.act, self.leak, self.sub, self.maxv = act, leak, sub, maxv
        self.backend: Optional[str] = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training:  # inference: the lean entry point (pydl.ops.batch_norm.eval_forward says why)
            rm, rv = self.running_mean, self.running_var
            if rm is not None:
                y = eval_forward(input, rm, rv, self.weight, self.bias, self.eps, self.act, self.leak, self.sub,
                                 self.maxv, self.backend)
                if y is not None:
                    return y
        # torch's _BatchNorm.forward, step by step, so train/eval behaviour is the same:
        # * training with running stats: count the batch, update running stats with momentum (or the
        #   cumulative average 1 / num_batches_tracked when momentum is None);
        # * batch statistics are used in training, and in eval when there are no running stats
        #   (track_running_stats=False);
        # * running stats are passed only when they are used or updated.
        momentum = self.momentum
        nbt = None
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                nbt = self.num_batches_tracked  # the op computes 1 / n on the device: no host sync
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if use_running else None,
                          self.running_var if use_running else None, self.weight, self.bias, bn_training,
                          momentum if momentum is not None or nbt is not None else 0.0, self.eps,
                          act=self.act, leak=self.leak, sub=self.sub, maxv=self.maxv, num_batches_tracked=nbt,
                          backend=self.backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.act != "none":
            s += f", act={self.act!r}"
            if self.act == "general_relu":
                s += f", leak={self.leak}, sub={self.sub}, maxv={self.maxv}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s

    # ---- conversion: the same tensors, not copies (an optimizer holding them keeps working) ----
    @staticmethod
    def _share(src: tnn.Module, dst: tnn.Module) -> tnn.Module:
        for name in ("weight", "bias"):
            dst._parameters[name] = src._parameters.get(name)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            dst._buffers[name] = src._buffers.get(name)
        dst.train(src.training)
        return dst

    @classmethod
    def from_torch(cls, m: tnn.Module, act: str = "none", leak=None, sub=None, maxv=None, backend=None):
        # device="meta": allocate nothing; every tensor is replaced by m's own just below
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta",
                  act=act, leak=leak, sub=sub, maxv=maxv, backend=backend)
        return cls._share(m, new)

    def to_torch(self) -> tnn.Module:
        if self.act != "none":
            raise ValueError(f"{type(self).__name__} with a fused act={self.act!r} has no torch twin: "
                             f"torch's BatchNorm has no activation (use nn.Sequential(BatchNorm, activation))")
        new = self._torch_cls(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats,
                              device="meta")
        return self._share(self, new)


def _make(torch_cls):
    class Cls(PydlBatchNorm, torch_cls):
        def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                     affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                     act: str = "none", leak: Optional[float] = None, sub: Optional[float] = None,
                     maxv: Optional[float] = None, backend: Optional[str] = None):
            torch_cls.__init__(self, num_features, eps, momentum, affine, track_running_stats, device=device,
                               dtype=dtype)
            self._pydl_init(act, leak, sub, maxv, backend)

    Cls._torch_cls = torch_cls
    Cls.__name__ = Cls.__qualname__ = torch_cls.__name__
    Cls.__module__ = __name__
    Cls.__doc__ = (f"Drop-in for torch.nn.{torch_cls.__name__} running pydl's batch_norm kernels (same "
                   f"constructor, parameters, buffers and state_dict), plus an optional fused activation.")
    register(torch_cls, Cls)
    return Cls


BatchNorm1d = _make(tnn.BatchNorm1d)
BatchNorm2d = _make(tnn.BatchNorm2d)
BatchNorm3d = _make(tnn.BatchNorm3d)
