"""Drop-in recurrent modules: pydl.nn.LSTM, GRU, LSTMCell, GRUCell.

Each one subclasses what its torch.nn twin is built from and replaces only ``forward``: LSTM and GRU derive
from ``torch.nn.RNNBase`` (with mode "LSTM"/"GRU", exactly as torch's classes do), the cells from
``torch.nn.LSTMCell`` / ``GRUCell``. So the constructor, the parameter names (``weight_ih_l0``,
``bias_hh_l1_reverse``, ...), the ``state_dict`` keys, the init and the repr are torch's own. Why not subclass
``torch.nn.LSTM`` itself: torch.compile (Dynamo) refuses any instance of nn.RNN/GRU/LSTM outright ("Dynamo
does not support RNN, GRU, or LSTM"), and our forward compiles fine.

The forward runs the whole sequence (every layer and direction) as one ``torch.ops.pydl.lstm`` / ``gru``
call, and its backward as one ``*_backward`` call. Note: ``isinstance(m, torch.nn.LSTM)`` is False for these
(it is True for ``torch.nn.RNNBase``).

``backend``: None (the current default: ``pydl.backend(...)`` context or process default) or a backend name.

Not supported (a clear error, never a silently different result): ``proj_size > 0`` and PackedSequence
input. A wrong input or state size is reported in torch's words; batch 0 gives torch's empty outputs.
Dropout between layers uses torch's RNG but in its own order, so with ``dropout > 0`` in training the numbers
differ from torch's (the distribution is the same). The other deliberate differences are listed in
pydl.ops.rnn.lstm's docstring.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as tnn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from .convert import register

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell"]


def _share_params(src: tnn.Module, dst: tnn.Module) -> tnn.Module:
    """Make ``dst`` use ``src``'s parameter tensors (the same objects: an optimizer holding them keeps working)."""
    for name, p in src.named_parameters(recurse=False):
        setattr(dst, name, p)
    dst.train(src.training)
    return dst


def _autocast(x, weights, hx):
    """Under CUDA autocast torch runs its recurrent layers (cuDNN) in the autocast dtype; do the same, so a
    converted model behaves alike. (Custom ops are not in autocast's tables, hence the explicit casts.)"""
    dev = x.device.type
    if dev != "cuda" or not torch.is_autocast_enabled(dev):
        return x, weights, hx
    dt = torch.get_autocast_dtype(dev)
    cast = lambda t: t.to(dt) if t is not None and t.is_floating_point() else t  # noqa: E731
    if isinstance(hx, tuple):
        hx = tuple(cast(h) for h in hx)
    return cast(x), [cast(w) for w in weights], cast(hx) if isinstance(hx, torch.Tensor) else hx


def _no_packed(module, x):
    if isinstance(x, PackedSequence):
        raise TypeError(f"pydl.nn.{type(module).__name__} does not support PackedSequence input; pass a padded "
                        f"tensor (torch.nn.utils.rnn.pad_packed_sequence) or use torch.nn.{type(module).__name__} "
                        f"(pydl.convert(model, to='torch'))")


class _SeqMixin:
    backend: Optional[str] = None
    _kind = ""

    def _check_config(self):
        if getattr(self, "proj_size", 0):
            raise ValueError(f"pydl.nn.{type(self).__name__}: proj_size > 0 is not supported "
                             f"(use torch.nn.LSTM for projected LSTMs)")

    @classmethod
    def from_torch(cls, m):
        kw = dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers, bias=m.bias,
                  batch_first=m.batch_first, dropout=m.dropout, bidirectional=m.bidirectional)
        if getattr(m, "proj_size", 0):
            kw["proj_size"] = m.proj_size  # raises the clear "not supported" error
        # built on the meta device: its own parameters are replaced by m's right away, no need to allocate
        new = cls(**kw, device="meta", dtype=m.weight_hh_l0.dtype)
        return _share_params(m, new)

    def to_torch(self):
        torch_cls = tnn.LSTM if self._kind == "lstm" else tnn.GRU
        new = torch_cls(self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                        batch_first=self.batch_first, dropout=self.dropout, bidirectional=self.bidirectional,
                        device="meta", dtype=self.weight_hh_l0.dtype)
        return _share_params(self, new)

    def _run(self, x, hx):
        _no_packed(self, x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"pydl.nn.{type(self).__name__}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3):
            raise ValueError(f"pydl.nn.{type(self).__name__}: expected a 2-D (unbatched) or 3-D input, got shape "
                             f"{tuple(x.shape)}")
        batched = x.dim() == 3
        if not batched:  # unbatched (T, I): a batch of one, as torch does
            x = x.unsqueeze(1)
            if hx is not None:
                hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        batch_first = self.batch_first and batched
        # blame a wrong input as torch does, not as a mismatch of the weights the op would find; the dtype is
        # left to the op (a TypeError naming the tensor, where torch raises ValueError)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"pydl.nn.{type(self).__name__}: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {x.shape[-1]}")
        if hx is not None:  # torch's own helper and wording for the states
            B = x.shape[0 if batch_first else 1]
            want = (self.num_layers * (2 if self.bidirectional else 1), B, self.hidden_size)
            if self._kind == "lstm":
                if not (isinstance(hx, tuple) and len(hx) == 2):
                    raise TypeError(f"pydl.nn.LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
                self.check_hidden_size(hx[0], want, "Expected hidden[0] size {}, got {}")
                self.check_hidden_size(hx[1], want, "Expected hidden[1] size {}, got {}")
            else:
                self.check_hidden_size(hx, want)
        weights = self._flat_weights
        x, weights, hx = _autocast(x, weights, hx)
        common = dict(num_layers=self.num_layers, bidirectional=self.bidirectional, batch_first=batch_first,
                      has_bias=self.bias, dropout=self.dropout, training=self.training, backend=self.backend)
        if self._kind == "lstm":
            h0, c0 = (None, None) if hx is None else hx
            out, (hn, cn) = ops.rnn.lstm(x, weights, h0, c0, **common)
            state = (hn, cn) if batched else (hn.squeeze(1), cn.squeeze(1))
        else:
            out, hn = ops.rnn.gru(x, weights, hx, **common)
            state = hn if batched else hn.squeeze(1)
        return (out if batched else out.squeeze(1)), state


class LSTM(_SeqMixin, tnn.RNNBase):
    """torch.nn.LSTM with pydl's kernels. Returns ``(output, (h_n, c_n))``."""
    _kind = "lstm"

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._check_config()
        self.backend = None

    def forward(self, input, hx=None):  # noqa: A002 - torch's argument name
        return self._run(input, hx)


class GRU(_SeqMixin, tnn.RNNBase):
    """torch.nn.GRU with pydl's kernels. Returns ``(output, h_n)``."""
    _kind = "gru"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise TypeError("pydl.nn.GRU: unexpected argument proj_size (torch.nn.GRU has none either)")
        super().__init__("GRU", *args, **kwargs)
        self.backend = None

    def forward(self, input, hx=None):  # noqa: A002
        return self._run(input, hx)


class _CellMixin:
    backend: Optional[str] = None

    @classmethod
    def from_torch(cls, m):
        new = cls(m.input_size, m.hidden_size, bias=m.bias, device="meta", dtype=m.weight_hh.dtype)
        return _share_params(m, new)

    def to_torch(self):
        new = self._torch_cls(self.input_size, self.hidden_size, bias=self.bias, device="meta",
                              dtype=self.weight_hh.dtype)
        return _share_params(self, new)

    def _batch(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"pydl.nn.{type(self).__name__}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (1, 2):
            raise ValueError(f"pydl.nn.{type(self).__name__}: expected a 1-D (unbatched) or 2-D input, got shape "
                             f"{tuple(x.shape)}")
        if x.shape[-1] != self.input_size:  # torch's wording: the input is at fault, not the weights
            raise ValueError(f"pydl.nn.{type(self).__name__}: input has inconsistent input_size: got "
                             f"{x.shape[-1]} expected {self.input_size}")
        return x.dim() == 2


class LSTMCell(_CellMixin, tnn.LSTMCell):
    """torch.nn.LSTMCell with one fused pointwise kernel per step. Returns ``(h, c)``."""
    _torch_cls = tnn.LSTMCell

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = None

    def forward(self, input, hx=None):  # noqa: A002
        batched = self._batch(input)
        x = input if batched else input.unsqueeze(0)
        h, c = (None, None) if hx is None else hx
        if not batched and hx is not None:
            h, c = h.unsqueeze(0), c.unsqueeze(0)
        hy, cy = ops.rnn.lstm_cell(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                                   backend=self.backend)
        return (hy, cy) if batched else (hy.squeeze(0), cy.squeeze(0))


class GRUCell(_CellMixin, tnn.GRUCell):
    """torch.nn.GRUCell with one fused pointwise kernel per step. Returns ``h``."""
    _torch_cls = tnn.GRUCell

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = None

    def forward(self, input, hx=None):  # noqa: A002
        batched = self._batch(input)
        x = input if batched else input.unsqueeze(0)
        h = hx if (hx is None or batched) else hx.unsqueeze(0)
        hy = ops.rnn.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, backend=self.backend)
        return hy if batched else hy.squeeze(0)


register(tnn.LSTM, LSTM)
register(tnn.GRU, GRU)
register(tnn.LSTMCell, LSTMCell)
register(tnn.GRUCell, GRUCell)
