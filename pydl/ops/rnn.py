"""Recurrent layers: fused LSTM / GRU cells and whole multi-layer, bidirectional sequences.

Eight ops in the ``pydl`` namespace, each with the four backends (reference, cpu, cuda, triton):

=====================  ==========================================================================
op                     what it computes
=====================  ==========================================================================
``lstm_cell``          one LSTM step: ``(hy, cy, gates)``
``gru_cell``           one GRU step: ``(hy, ws)``
``lstm``               a whole LSTM stack over a (T, B, I) sequence: ``(out, hn, cn, reserve, layer_outs)``
``gru``                a whole GRU stack: ``(out, hn, reserve, layer_outs)``
``*_backward``         the matching backward through time: one op call, every layer and direction
=====================  ==========================================================================

**Formulas** (exactly torch's; gate order LSTM i, f, g, o and GRU r, z, n)::

    LSTM: [i f g o] = x W_ih^T + b_ih + h W_hh^T + b_hh
          i, f, o = sigmoid(.), g = tanh(.);  c' = f c + i g;  h' = o tanh(c')
    GRU:  [r z] = sigmoid(x W_i[rz]^T + b_i[rz] + h W_h[rz]^T + b_h[rz])
          n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));  h' = (1 - z) n + z h

**Shape of the computation.** A layer-direction runs *one* big GEMM for the input projections of all T steps
(``xg = X W_ih^T + b_ih (+ b_hh for the LSTM)``, (T*B, 4H)), then the recurrence: per step one small GEMM
(LSTM: ``xg[t] += h W_hh^T`` in place; GRU: ``hg = h W_hh^T + b_hh``, kept apart because r multiplies its n
part) and ONE fused pointwise kernel (all the sigmoids/tanhs and the cell update, writing h, c and the
activated gates). The GEMMs go through the matmul library (MKL / cuBLAS via ATen), where hand
code would not beat them; the pointwise part is what the kernels fuse. The backward walks time in reverse
with one fused pointwise kernel + one GEMM (dh = dG W_hh) per step, then computes the weight gradients of
the layer with a few big GEMMs over all steps at once (dW_ih = dG^T X, dW_hh = dG^T H_prev, db = sum dG).
The C++ CPU backend runs fp32/fp64 layer-directions differently: one parallel region per direction, with
the input projection inside the time loop when the packed weights fit in cache and the bias gradients summed
in the backward's loop (csrc/cpu/rnn.cpp, "a whole sequence in one parallel region").

**What is saved for the backward** (the ``reserve`` output, accumulation dtype): per layer-direction the
activated gates of every step and the cell state of every step (LSTM, 4H + H per row) or r, z, n and
``W_hn h + b_hn`` (GRU, 4H per row); plus ``layer_outs``, the outputs of every layer but the last (input dtype,
needed as the next layer's input for dW_ih). Nothing is recomputed but the dropout-masked layer inputs.

**Precision.** Gate pre-activations come out of the GEMMs in the input dtype; the pointwise math, the LSTM
cell state and the backward's cell-state gradient are fp32 (fp64 for fp64 input); h is stored in the input
dtype (it is the next GEMM's input, as in torch).

**Dropout** between layers (training only) is a mask ``(L-1, T, B, D*H)`` drawn in Python with torch's RNG
and passed in, so every backend applies the same mask; torch's own LSTM draws from the RNG in a different
order, so results equal torch's only with ``dropout=0``.

**Second derivatives** (a gradient penalty; ``create_graph=True``): the backward ops are kernels whose
outputs carry no graph, so a backward that autograd runs with grad mode on recomputes the forward from the
saved inputs with differentiable torch code (``cell_autograd`` / ``seq_autograd``) and differentiates that --
exact to every order, at the cost of one extra forward; first-order training keeps the fused backward.

**Checks.** Every op, the backwards included, validates every shape, dtype and device in Python (the
sequence ops for every backend; the cells for the Python backends, since a cell step is short enough for a
second check to show) and again in C++ (csrc/rnn_driver.h), since a compiled op can be called directly.
Empty batches (and cells with hidden size 0) are answered in Python without a kernel: torch's empty outputs.

Not supported: ``proj_size > 0`` (LSTM projections) and PackedSequence input (the modules raise a clear
error for both). The other deliberate differences from torch are listed in :func:`lstm`'s docstring.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .. import backends
from .._layout import acc_dtype
from . import rnn_autograd
from ._common import LIB, check_floating, compiled
from .rnn_driver import (RESERVE_COLS, RefPointwise, check_cell, check_cell_backward, check_seq, check_seq_backward,
                         implementations)

__all__ = ["lstm_cell", "gru_cell", "lstm", "gru", "lstm_reference", "gru_reference"]

BUILD_UNIT = "rnn"  # every op here is compiled from csrc/cpu/rnn.cpp / csrc/cuda/rnn.{cu,cpp}

LIB.define("lstm_cell(Tensor x, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
           "str backend) -> (Tensor, Tensor, Tensor)")
LIB.define("lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor x, Tensor hx, Tensor cx, Tensor w_ih, "
           "Tensor w_hh, Tensor gates, Tensor cy, bool need_dx, bool need_dh, str backend) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
LIB.define("gru_cell(Tensor x, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, str backend) "
           "-> (Tensor, Tensor)")
LIB.define("gru_cell_backward(Tensor grad_hy, Tensor x, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor ws, "
           "bool need_dx, bool need_dh, str backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
# The cell backwards take need_dx / need_dh (autograd's needs_input_grad): a GEMM nobody needs is skipped and
# its output is an empty (0,) tensor. In a step-by-step loop only the very first hx is a leaf without grad,
# but a benchmark -- or a model feeding constant states -- pays for the dh GEMM otherwise.
LIB.define("lstm(Tensor x, Tensor h0, Tensor c0, Tensor[] weights, Tensor? dropout_mask, int num_layers, "
           "bool bidirectional, bool has_bias, str backend, bool need_reserve=True) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
LIB.define("lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor h0, Tensor c0, "
           "Tensor[] weights, Tensor? dropout_mask, Tensor out, Tensor reserve, Tensor layer_outs, "
           "int num_layers, bool bidirectional, bool has_bias, bool need_dx, str backend) "
           "-> (Tensor, Tensor, Tensor, Tensor[])")
LIB.define("gru(Tensor x, Tensor h0, Tensor[] weights, Tensor? dropout_mask, int num_layers, "
           "bool bidirectional, bool has_bias, str backend, bool need_reserve=True) "
           "-> (Tensor, Tensor, Tensor, Tensor)")
# need_reserve=False (inference: no gradient will be asked for): the activated gates and cell states of each
# step go to a small scratch buffer that stays in cache instead of the (L*D, T*B*R*H) reserve, which comes
# back empty. Writing that reserve is most of the pointwise part's memory traffic.
LIB.define("gru_backward(Tensor grad_out, Tensor grad_hn, Tensor x, Tensor h0, Tensor[] weights, "
           "Tensor? dropout_mask, Tensor out, Tensor reserve, Tensor layer_outs, int num_layers, "
           "bool bidirectional, bool has_bias, bool need_dx, str backend) -> (Tensor, Tensor, Tensor[])")
# need_dx = False (x needs no gradient, e.g. raw features): the first layer's dX GEMM is skipped and grad_x is
# an empty (0,) tensor -- one of the five GEMM-sized pieces of a one-layer backward.


# --------------------------------------------------------------------------------------------------
# The reference backend: the shared drivers (pydl/ops/rnn_driver.py) with the plain-torch pointwise math
# --------------------------------------------------------------------------------------------------

_REF = implementations(RefPointwise)
lstm_cell_reference, lstm_cell_backward_reference = _REF["lstm_cell"], _REF["lstm_cell_backward"]
gru_cell_reference, gru_cell_backward_reference = _REF["gru_cell"], _REF["gru_cell_backward"]
lstm_reference, lstm_backward_reference = _REF["lstm"], _REF["lstm_backward"]
gru_reference, gru_backward_reference = _REF["gru"], _REF["gru_backward"]


# --------------------------------------------------------------------------------------------------
# Backend tables
# --------------------------------------------------------------------------------------------------

def _triton(name):
    """The Triton backend: the same drivers with the Triton pointwise kernels (imported on first use)."""
    def load():
        from ..kernels.rnn import TritonPointwise

        return implementations(TritonPointwise)[name]

    return load

OPS = {
    # all eight ops come from one source per device (csrc/cpu/rnn.cpp, csrc/cuda/rnn.*): build unit "rnn"
    name: backends.register_op(backends.Op(name, {
        "reference": (lambda f=ref: f),
        "cpu": compiled("pydl_cpu", name),
        "cuda": compiled("pydl_cuda", name),
        "triton": _triton(name),
        "cuda_emu": compiled("pydl_cuda_emu", name),
    }, build_unit=BUILD_UNIT))
    for name, ref in _REF.items()
}


# --------------------------------------------------------------------------------------------------
# Dispatcher kernels (CPU and CUDA keys): check, then run the chosen backend
# --------------------------------------------------------------------------------------------------

def _checked(op, backend, device_type, check):
    """The implementation of ``op`` for this call. The compiled kernels validate their arguments in C++
    (they can be called directly), so the Python check runs only for the Python backends: a cell step is
    short enough for a duplicated check to show in its time."""
    name = OPS[op].resolve(backend, device_type)
    if name not in ("cpu", "cuda", "cuda_emu"):
        check()
    return OPS[op].impl(name)


# Empty batches (and cells with hidden size 0) never reach a backend: every output is then empty, and every
# gradient is a sum over an empty set -- zeros of the input's shape. The kernels need not handle them (a CUDA
# launch of zero blocks is an error), and every backend gives torch's empty result alike.

def _cell_empty(x, w_hh):
    # (only for well-formed ranks: the check that follows reports anything else)
    return (x.dim() == 2 and x.shape[0] == 0) or (w_hh.dim() == 2 and w_hh.shape[1] == 0)


def _zeros(t):
    return t.new_zeros(t.shape)


def _lstm_cell_kernel(x, hx, cx, w_ih, w_hh, b_ih, b_hh, backend):
    check = lambda: check_cell("lstm", x, hx, cx, w_ih, w_hh, b_ih, b_hh)  # noqa: E731
    if _cell_empty(x, w_hh):
        check()
        return _lstm_cell_fake(x, hx, cx, w_ih, w_hh, b_ih, b_hh, backend)
    return _checked("lstm_cell", backend, x.device.type, check)(x, hx, cx, w_ih, w_hh, b_ih, b_hh)


def _cell_backward_empty(x, hx, w_ih, n_bias, need_dx, need_dh):
    skipped = x.new_empty((0,))
    bias = tuple(w_ih.new_zeros((w_ih.shape[0],)) for _ in range(n_bias))
    return (_zeros(x) if need_dx else skipped, _zeros(hx) if need_dh else skipped, _zeros(w_ih)) + bias


def _lstm_cell_backward_kernel(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx, need_dh, backend):
    check = lambda: check_cell_backward("lstm", grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy)  # noqa: E731
    if _cell_empty(x, w_hh):
        check()
        dx, dh, dw_ih, db = _cell_backward_empty(x, hx, w_ih, 1, need_dx, need_dh)
        return dx, dh, _zeros(cx), dw_ih, _zeros(w_hh), db
    return _checked("lstm_cell_backward", backend, x.device.type, check)(
        grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx, need_dh)


def _gru_cell_kernel(x, hx, w_ih, w_hh, b_ih, b_hh, backend):
    check = lambda: check_cell("gru", x, hx, None, w_ih, w_hh, b_ih, b_hh)  # noqa: E731
    if _cell_empty(x, w_hh):
        check()
        return _gru_cell_fake(x, hx, w_ih, w_hh, b_ih, b_hh, backend)
    return _checked("gru_cell", backend, x.device.type, check)(x, hx, w_ih, w_hh, b_ih, b_hh)


def _gru_cell_backward_kernel(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh, backend):
    check = lambda: check_cell_backward("gru", grad_hy, None, x, hx, None, w_ih, w_hh, ws, None)  # noqa: E731
    if _cell_empty(x, w_hh):
        check()
        dx, dh, dw_ih, gbi, gbh = _cell_backward_empty(x, hx, w_ih, 2, need_dx, need_dh)
        return dx, dh, dw_ih, _zeros(w_hh), gbi, gbh
    return _checked("gru_cell_backward", backend, x.device.type, check)(
        grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh)


# The sequence ops check in Python for every backend: a whole sequence amortises the check.

def _lstm_kernel(x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve=True):
    check_seq("lstm", x, h0, c0, weights, mask, num_layers, bidirectional, has_bias)
    if x.shape[1] == 0:
        return _lstm_fake(x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve)
    return OPS["lstm"](backend, x.device.type, x, h0, c0, weights, mask, num_layers, bidirectional, has_bias,
                       need_reserve)


def _seq_backward_empty(x, h0, weights, need_dx):
    return _zeros(x) if need_dx else x.new_empty((0,)), _zeros(h0), [_zeros(w) for w in weights]


def _lstm_backward_kernel(grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                          num_layers, bidirectional, has_bias, need_dx, backend):
    check_seq_backward("lstm", grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                       num_layers, bidirectional, has_bias)
    if x.shape[1] == 0:
        gx, gh0, gw = _seq_backward_empty(x, h0, weights, need_dx)
        return gx, gh0, _zeros(c0), gw
    return OPS["lstm_backward"](backend, x.device.type, grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out,
                                reserve, layer_outs, num_layers, bidirectional, has_bias, need_dx)


def _gru_kernel(x, h0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve=True):
    check_seq("gru", x, h0, None, weights, mask, num_layers, bidirectional, has_bias)
    if x.shape[1] == 0:
        return _gru_fake(x, h0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve)
    return OPS["gru"](backend, x.device.type, x, h0, weights, mask, num_layers, bidirectional, has_bias, need_reserve)


def _gru_backward_kernel(grad_out, grad_hn, x, h0, weights, mask, out, reserve, layer_outs, num_layers,
                         bidirectional, has_bias, need_dx, backend):
    check_seq_backward("gru", grad_out, grad_hn, None, x, h0, None, weights, mask, out, reserve, layer_outs,
                       num_layers, bidirectional, has_bias)
    if x.shape[1] == 0:
        return _seq_backward_empty(x, h0, weights, need_dx)
    return OPS["gru_backward"](backend, x.device.type, grad_out, grad_hn, x, h0, weights, mask, out, reserve,
                               layer_outs, num_layers, bidirectional, has_bias, need_dx)


for _name, _fn in (("lstm_cell", _lstm_cell_kernel), ("lstm_cell_backward", _lstm_cell_backward_kernel),
                   ("gru_cell", _gru_cell_kernel), ("gru_cell_backward", _gru_cell_backward_kernel),
                   ("lstm", _lstm_kernel), ("lstm_backward", _lstm_backward_kernel),
                   ("gru", _gru_kernel), ("gru_backward", _gru_backward_kernel)):
    LIB.impl(_name, _fn, "CPU")
    LIB.impl(_name, _fn, "CUDA")


# --------------------------------------------------------------------------------------------------
# Fake (meta) implementations: shapes only, for torch.compile and opcheck
# --------------------------------------------------------------------------------------------------

def _like(t):
    """A contiguous tensor of t's shape: what every backend returns (empty_like would copy t's strides)."""
    return t.new_empty(t.shape)


@torch.library.register_fake("pydl::lstm_cell")
def _lstm_cell_fake(x, hx, cx, w_ih, w_hh, b_ih, b_hh, backend):
    check_cell("lstm", x, hx, cx, w_ih, w_hh, b_ih, b_hh)
    B, H = hx.shape
    return x.new_empty((B, H)), x.new_empty((B, H)), x.new_empty((B, 4 * H), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("pydl::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx, need_dh, backend):
    check_cell_backward("lstm", grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy)
    skipped = x.new_empty((0,))
    return (_like(x) if need_dx else skipped, _like(hx) if need_dh else skipped, _like(cx), _like(w_ih),
            _like(w_hh), w_ih.new_empty((w_ih.shape[0],)))


@torch.library.register_fake("pydl::gru_cell")
def _gru_cell_fake(x, hx, w_ih, w_hh, b_ih, b_hh, backend):
    check_cell("gru", x, hx, None, w_ih, w_hh, b_ih, b_hh)
    B, H = hx.shape
    return x.new_empty((B, H)), x.new_empty((B, 4 * H), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("pydl::gru_cell_backward")
def _gru_cell_backward_fake(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh, backend):
    check_cell_backward("gru", grad_hy, None, x, hx, None, w_ih, w_hh, ws, None)
    G = w_ih.shape[0]
    skipped = x.new_empty((0,))
    return (_like(x) if need_dx else skipped, _like(hx) if need_dh else skipped, _like(w_ih), _like(w_hh),
            w_ih.new_empty((G,)), w_ih.new_empty((G,)))


def _seq_fake(kind, x, weights, num_layers, bidirectional, need_reserve):
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = weights[1].shape[1]
    out = x.new_empty((T, B, D * H))
    hn = x.new_empty((num_layers * D, B, H))
    per = T * B * RESERVE_COLS[kind] * H if need_reserve else 0
    reserve = x.new_empty((num_layers * D, per), dtype=acc_dtype(x.dtype))
    layer_outs = x.new_empty((max(num_layers - 1, 0), T, B, D * H))
    return out, hn, reserve, layer_outs


@torch.library.register_fake("pydl::lstm")
def _lstm_fake(x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve=True):
    check_seq("lstm", x, h0, c0, weights, mask, num_layers, bidirectional, has_bias)
    out, hn, reserve, layer_outs = _seq_fake("lstm", x, weights, num_layers, bidirectional, need_reserve)
    return out, hn, _like(hn), reserve, layer_outs


@torch.library.register_fake("pydl::lstm_backward")
def _lstm_backward_fake(grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                        num_layers, bidirectional, has_bias, need_dx, backend):
    check_seq_backward("lstm", grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                       num_layers, bidirectional, has_bias)
    return _like(x) if need_dx else x.new_empty((0,)), _like(h0), _like(c0), [_like(w) for w in weights]


@torch.library.register_fake("pydl::gru")
def _gru_fake(x, h0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve=True):
    check_seq("gru", x, h0, None, weights, mask, num_layers, bidirectional, has_bias)
    return _seq_fake("gru", x, weights, num_layers, bidirectional, need_reserve)


@torch.library.register_fake("pydl::gru_backward")
def _gru_backward_fake(grad_out, grad_hn, x, h0, weights, mask, out, reserve, layer_outs, num_layers,
                       bidirectional, has_bias, need_dx, backend):
    check_seq_backward("gru", grad_out, grad_hn, None, x, h0, None, weights, mask, out, reserve, layer_outs,
                       num_layers, bidirectional, has_bias)
    return _like(x) if need_dx else x.new_empty((0,)), _like(h0), [_like(w) for w in weights]


# --------------------------------------------------------------------------------------------------
# Autograd: the backward of every op is itself a backend-dispatched pydl op (pydl/ops/rnn_autograd.py)
# --------------------------------------------------------------------------------------------------

for _name, (_bwd, _setup) in rnn_autograd.AUTOGRAD.items():
    torch.library.register_autograd(f"pydl::{_name}", _bwd, setup_context=_setup)


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------

def _backend(backend):
    return backends.get_backend() if backend is None else backend


def _check_public_cell(op, x, w_ih, w_hh):
    """What the public cell functions read before the op checks everything: x's batch size, w_hh's width."""
    check_floating(x, op, "x")
    if x.dim() != 2:
        raise ValueError(f"pydl.{op}: x must be 2-D (batch, input_size), got shape {tuple(x.shape)}")
    if w_ih is None or w_hh is None:
        raise TypeError(f"pydl.{op}: w_ih and w_hh are required")
    check_floating(w_hh, op, "w_hh")
    if w_hh.dim() != 2:
        raise ValueError(f"pydl.{op}: w_hh must be 2-D (gates*hidden, hidden), got shape {tuple(w_hh.shape)}")


def lstm_cell(x: torch.Tensor, hx: Optional[torch.Tensor] = None, cx: Optional[torch.Tensor] = None,
              w_ih: Optional[torch.Tensor] = None, w_hh: Optional[torch.Tensor] = None,
              b_ih: Optional[torch.Tensor] = None, b_hh: Optional[torch.Tensor] = None,
              backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step (torch.nn.LSTMCell's math): returns ``(hy, cy)``. ``x`` (B, I); ``hx``, ``cx`` (B, H)
    (zeros if None); ``w_ih`` (4H, I), ``w_hh`` (4H, H); biases (4H,) or None.

    Batch 0, hidden size 0 and input size 0 give torch's results (empty outputs; zeros from an empty input
    projection). Differences from torch.nn.functional: only 2-D ``x`` (the module pydl.nn.LSTMCell takes
    unbatched 1-D input, as torch's does); every tensor must share ``x``'s dtype and device (no promotion).
    Second derivatives are exact: a backward run with ``create_graph=True`` recomputes the step with
    differentiable torch ops (see pydl/ops/rnn_autograd.py), one extra forward's cost."""
    _check_public_cell("lstm_cell", x, w_ih, w_hh)
    H = w_hh.shape[1]
    hx = x.new_zeros((x.shape[0], H)) if hx is None else hx
    cx = x.new_zeros((x.shape[0], H)) if cx is None else cx
    hy, cy, _ = torch.ops.pydl.lstm_cell(x, hx, cx, w_ih, w_hh, b_ih, b_hh, _backend(backend))
    return hy, cy


def gru_cell(x: torch.Tensor, hx: Optional[torch.Tensor] = None, w_ih: Optional[torch.Tensor] = None,
             w_hh: Optional[torch.Tensor] = None, b_ih: Optional[torch.Tensor] = None,
             b_hh: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """One GRU step (torch.nn.GRUCell's math): returns ``hy``. Shapes, empty sizes, dtype rules and second
    derivatives as for :func:`lstm_cell` (3H gate rows instead of 4H)."""
    _check_public_cell("gru_cell", x, w_ih, w_hh)
    hx = x.new_zeros((x.shape[0], w_hh.shape[1])) if hx is None else hx
    hy, _ = torch.ops.pydl.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh, _backend(backend))
    return hy


def dropout_masks(x_like: torch.Tensor, num_layers: int, T: int, B: int, DH: int, p: float) -> Optional[torch.Tensor]:
    """The between-layer dropout masks, scaled by 1/(1-p), drawn with torch's RNG (None when p == 0)."""
    if p <= 0 or num_layers < 2:
        return None
    if p >= 1:
        return x_like.new_zeros((num_layers - 1, T, B, DH))
    return x_like.new_empty((num_layers - 1, T, B, DH)).bernoulli_(1 - p).div_(1 - p)


def _grad_needed(x, h0, c0, weights) -> bool:
    """Will autograd ask for a backward of this call? (Else the forward need not save its activations.)"""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or h0.requires_grad or (c0 is not None and c0.requires_grad) or \
        any(w.requires_grad for w in weights)


def _seq_prepare(op, x, weights, num_layers, bidirectional, batch_first, has_bias, dropout):
    """Validates what the public functions read themselves (the op checks the rest); returns (x in (T, B, I)
    order, the weights as a list, has_bias)."""
    check_floating(x, op, "x")
    if x.dim() != 3:
        raise ValueError(f"pydl.{op}: x must be 3-D ({'batch, seq' if batch_first else 'seq, batch'}, input_size), "
                         f"got shape {tuple(x.shape)}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"pydl.{op}: num_layers must be an int >= 1, got {num_layers!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"pydl.{op}: dropout must be a number in [0, 1], got {dropout!r}")
    if isinstance(weights, torch.Tensor) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"pydl.{op}: weights must be a list of tensors, got {type(weights).__name__}")
    weights = list(weights)
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"pydl.{op}: weights[{i}] must be a torch.Tensor, got {type(w).__name__}")
    D = 2 if bidirectional else 1
    per = num_layers * D
    if has_bias is None and len(weights) in (2 * per, 4 * per):
        has_bias = len(weights) == 4 * per
    if has_bias is None or len(weights) != (4 if has_bias else 2) * per:
        raise ValueError(f"pydl.{op}: weights must hold {4 * per} tensors (w_ih, w_hh, b_ih, b_hh for each of "
                         f"{num_layers} layer(s) x {D} direction(s), torch's flat order) or {2 * per} without "
                         f"biases, got {len(weights)}")
    if weights[1].dim() != 2:
        raise ValueError(f"pydl.{op}: weights[1] (w_hh of layer 0) must be 2-D (gates*hidden, hidden), got shape "
                         f"{tuple(weights[1].shape)}")
    if batch_first:
        x = x.transpose(0, 1)
    return x, weights, has_bias


def lstm(x: torch.Tensor, weights: Sequence[torch.Tensor], h0: Optional[torch.Tensor] = None,
         c0: Optional[torch.Tensor] = None, num_layers: int = 1, bidirectional: bool = False, batch_first: bool = False,
         has_bias: Optional[bool] = None, dropout: float = 0.0, training: bool = False,
         backend: Optional[str] = None) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """A whole (multi-layer, optionally bidirectional) LSTM over a sequence, in ONE op call.

    ``weights``: torch's flat order -- for each layer, for each direction: ``w_ih, w_hh[, b_ih, b_hh]``.
    ``x``: (T, B, I) (or (B, T, I) with ``batch_first``); ``h0``, ``c0``: (layers*dirs, B, H) or None.
    Returns ``(output, (h_n, c_n))`` like torch.nn.LSTM. ``dropout`` applies between layers when ``training``.

    Where pydl differs from torch, on purpose:

    * batch 0 returns torch's empty outputs; sequence length 0 and input size 0 raise (torch.nn.LSTM refuses
      them too); hidden size 0 raises (torch.nn.LSTM refuses ``hidden_size=0``);
    * every tensor must have ``x``'s dtype and device (no promotion), and ``x`` must be 3-D (the modules in
      pydl.nn take unbatched 2-D input, as torch's do);
    * dropout masks are drawn with torch's RNG in a different order: equal to torch only with ``dropout=0``;
    * no ``proj_size`` and no PackedSequence (the modules raise a clear error for both);
    * second derivatives (``create_graph=True``) are exact but recompute the sequence with differentiable
      torch ops, step by step: one extra forward, and slower than the fused first-order backward.
    """
    x, weights, has_bias = _seq_prepare("lstm", x, weights, num_layers, bidirectional, batch_first, has_bias,
                                        dropout)
    D = 2 if bidirectional else 1
    H = weights[1].shape[1]
    T, B = x.shape[0], x.shape[1]
    h0 = x.new_zeros((num_layers * D, B, H)) if h0 is None else h0
    c0 = x.new_zeros((num_layers * D, B, H)) if c0 is None else c0
    mask = dropout_masks(x, num_layers, T, B, D * H, dropout) if training else None
    out, hn, cn, _, _ = torch.ops.pydl.lstm(x, h0, c0, weights, mask, num_layers, bidirectional, has_bias,
                                            _backend(backend), _grad_needed(x, h0, c0, weights))
    if batch_first:
        out = out.transpose(0, 1)
    return out, (hn, cn)


def gru(x: torch.Tensor, weights: Sequence[torch.Tensor], h0: Optional[torch.Tensor] = None, num_layers: int = 1,
        bidirectional: bool = False, batch_first: bool = False, has_bias: Optional[bool] = None, dropout: float = 0.0,
        training: bool = False, backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A whole GRU stack over a sequence in one op call; returns ``(output, h_n)`` like torch.nn.GRU. Arguments
    and the deliberate differences from torch as for :func:`lstm` (weights: 3H gate rows instead of 4H)."""
    x, weights, has_bias = _seq_prepare("gru", x, weights, num_layers, bidirectional, batch_first, has_bias,
                                        dropout)
    D = 2 if bidirectional else 1
    H = weights[1].shape[1]
    T, B = x.shape[0], x.shape[1]
    h0 = x.new_zeros((num_layers * D, B, H)) if h0 is None else h0
    mask = dropout_masks(x, num_layers, T, B, D * H, dropout) if training else None
    out, hn, _, _ = torch.ops.pydl.gru(x, h0, weights, mask, num_layers, bidirectional, has_bias, _backend(backend),
                                       _grad_needed(x, h0, None, weights))
    if batch_first:
        out = out.transpose(0, 1)
    return out, hn
