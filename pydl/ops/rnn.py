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

from typing import List, Optional, Sequence

import torch

from .. import backends
from ._common import LIB, acc_dtype, check_floating, compiled

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

NGATES = {"lstm": 4, "gru": 3}
RESERVE_COLS = {"lstm": 5, "gru": 4}  # per (t, b) row, in units of H


# --------------------------------------------------------------------------------------------------
# Argument checks (shared by the dispatcher kernels and the fake implementations)
# --------------------------------------------------------------------------------------------------

def _check_same(t, ref, op, arg, ref_arg):
    check_floating(t, op, arg)
    if t.dtype != ref.dtype:
        raise TypeError(f"pydl.{op}: {arg} must have the dtype of {ref_arg} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"pydl.{op}: {arg} must be on {ref_arg}'s device ({ref.device}), got {t.device}")


def _check_shape(t, shape, op, arg):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"pydl.{op}: {arg} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_cell(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh, op=None):
    op = op or f"{kind}_cell"
    G = NGATES[kind]
    check_floating(x, op, "x")
    if x.dim() != 2:
        raise ValueError(f"pydl.{op}: x must be 2-D (batch, input_size), got shape {tuple(x.shape)}")
    for name, t in (("hx", hx), ("cx", cx), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None:
            _check_same(t, x, op, name, "x")
    if w_hh.dim() != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"pydl.{op}: w_hh must have shape ({G}*hidden, hidden), got {tuple(w_hh.shape)}")
    B, I = x.shape
    H = w_hh.shape[1]
    _check_shape(w_ih, (G * H, I), op, "w_ih")
    _check_shape(hx, (B, H), op, "hx")
    if cx is not None:
        _check_shape(cx, (B, H), op, "cx")
    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"pydl.{op}: give both biases or neither")
    if b_ih is not None:
        _check_shape(b_ih, (G * H,), op, "b_ih")
        _check_shape(b_hh, (G * H,), op, "b_hh")


def _check_acc(t, x, op, arg, shape):
    """A tensor the forward saved in the accumulation dtype (gates, ws, reserve), handed back to a backward."""
    check_floating(t, op, arg)
    acc = acc_dtype(x.dtype)
    if t.dtype != acc:
        raise TypeError(f"pydl.{op}: {arg} must be {acc} (what the forward saves for {x.dtype} input), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"pydl.{op}: {arg} must be on x's device ({x.device}), got {t.device}")
    _check_shape(t, shape, op, arg)


def check_cell_backward(kind, grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, saved, cy):
    """The cell backwards get the forward's inputs and saved tensors back: each must have exactly the shape
    the forward gives it, since the kernels size their buffers from some and index the others alike."""
    op = f"{kind}_cell_backward"
    check_cell(kind, x, hx, cx, w_ih, w_hh, None, None, op)
    B, H = x.shape[0], w_hh.shape[1]
    for name, t in (("grad_hy", grad_hy), ("grad_cy", grad_cy), ("cy", cy)):
        if t is not None:
            _check_same(t, x, op, name, "x")
            _check_shape(t, (B, H), op, name)
    _check_acc(saved, x, op, "gates" if kind == "lstm" else "ws", (B, 4 * H))


def check_seq_backward(kind, grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                       num_layers, bidirectional, has_bias):
    op = f"{kind}_backward"
    T, B, _, H, D = check_seq(kind, x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, op)
    L = num_layers
    for name, t, shape in (("grad_out", grad_out, (T, B, D * H)), ("grad_hn", grad_hn, (L * D, B, H)),
                           ("grad_cn", grad_cn, (L * D, B, H)), ("out", out, (T, B, D * H)),
                           ("layer_outs", layer_outs, (max(L - 1, 0), T, B, D * H))):
        if t is not None:
            _check_same(t, x, op, name, "x")
            _check_shape(t, shape, op, name)
    want = (L * D, T * B * RESERVE_COLS[kind] * H)
    if isinstance(reserve, torch.Tensor) and reserve.dim() == 2 and reserve.shape[1] == 0 and want[1] > 0:
        raise ValueError(f"pydl.{op}: reserve is empty: the forward ran with need_reserve=False and saved "
                         f"nothing for a backward")
    _check_acc(reserve, x, op, "reserve", want)


def check_seq(kind, x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, op=None):
    """Validates a whole-sequence call; returns (T, B, I, H, D)."""
    op = op or kind
    G = NGATES[kind]
    check_floating(x, op, "x")
    if x.dim() != 3:
        raise ValueError(f"pydl.{op}: x must be 3-D (seq, batch, input_size), got shape {tuple(x.shape)}")
    if num_layers < 1:
        raise ValueError(f"pydl.{op}: num_layers must be >= 1, got {num_layers}")
    D = 2 if bidirectional else 1
    nw = 4 if has_bias else 2
    if len(weights) != num_layers * D * nw:
        raise ValueError(f"pydl.{op}: expected {num_layers * D * nw} weight tensors (layers x directions x "
                         f"[w_ih, w_hh{', b_ih, b_hh' if has_bias else ''}]), got {len(weights)}")
    T, B, I = x.shape
    if T == 0 or I == 0:  # (batch 0 is fine: empty outputs, as torch gives)
        raise ValueError(f"pydl.{op}: x of shape {tuple(x.shape)} is empty: sequence length and input_size must "
                         f"be > 0 (as torch.nn.LSTM/GRU require)")
    w_hh0 = weights[1]
    _check_same(w_hh0, x, op, "weights[1]", "x")
    if w_hh0.dim() != 2 or w_hh0.shape[0] != G * w_hh0.shape[1] or w_hh0.shape[1] == 0:
        raise ValueError(f"pydl.{op}: w_hh must have shape ({G}*hidden, hidden), got {tuple(w_hh0.shape)}")
    H = w_hh0.shape[1]
    for layer in range(num_layers):
        in_size = I if layer == 0 else D * H
        for d in range(D):
            k = (layer * D + d) * nw
            names = ("w_ih", "w_hh", "b_ih", "b_hh")
            shapes = ((G * H, in_size), (G * H, H), (G * H,), (G * H,))
            for j in range(nw):
                arg = f"weights[{k + j}] ({names[j]} of layer {layer}{' reverse' if d else ''})"
                _check_same(weights[k + j], x, op, arg, "x")
                _check_shape(weights[k + j], shapes[j], op, arg)
    for name, t in (("h0", h0), ("c0", c0)):
        if t is not None:
            _check_same(t, x, op, name, "x")
            _check_shape(t, (num_layers * D, B, H), op, name)
    if mask is not None:
        _check_same(mask, x, op, "dropout_mask", "x")
        _check_shape(mask, (num_layers - 1, T, B, D * H), op, "dropout_mask")
    return T, B, I, H, D


def _split_weights(weights, k, has_bias):
    nw = 4 if has_bias else 2
    w = weights[k * nw: (k + 1) * nw]
    return (w[0], w[1], w[2], w[3]) if has_bias else (w[0], w[1], None, None)


# --------------------------------------------------------------------------------------------------
# The pointwise math, in plain torch (the reference backend's kernels; readable ground truth).
# Every function writes into the output tensors it is given, like the compiled kernels do, so that one
# sequence driver (below) serves the reference and the Triton backends alike.
# --------------------------------------------------------------------------------------------------

def lstm_pointwise(pre, c_prev):
    """The LSTM step's pointwise math in plain, differentiable torch: pre (B, 4H) the summed gate
    pre-activations (input dtype), c_prev (B, H) acc -> (gates (B, 4H) activated, c (B, H) acc, h (B, H) in
    pre's dtype). Shared by the reference kernels below and the double-backward recompute further down."""
    acc = c_prev.dtype
    i, f, g, o = pre.to(acc).chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_prev + i * g
    return torch.cat([i, f, g, o], 1), c, (o * c.tanh()).to(pre.dtype)


def gru_pointwise(xg, hg, h_prev):
    """The GRU step's pointwise math in plain, differentiable torch: xg, hg (B, 3H) the input and hidden
    projections (input dtype), h_prev (B, H) -> (ws (B, 4H) acc = [r, z, n, hn], h (B, H) in h_prev's dtype)."""
    acc = acc_dtype(xg.dtype)
    xr, xz, xn = xg.to(acc).chunk(3, 1)
    hr, hz, hn = hg.to(acc).chunk(3, 1)
    r = (xr + hr).sigmoid()
    z = (xz + hz).sigmoid()
    n = (xn + r * hn).tanh()
    return torch.cat([r, z, n, hn], 1), ((1 - z) * n + z * h_prev.to(acc)).to(h_prev.dtype)


class RefPointwise:
    @staticmethod
    def lstm_fwd(pre, c_prev, gates, c, h):
        """pre (B, 4H) input dtype: the gate pre-activations x W_ih^T + h W_hh^T + b_ih + b_hh; c_prev (B, H) acc
        -> gates (B, 4H) activated (acc), c (B, H) acc, h (B, H)."""
        g_new, c_new, h_new = lstm_pointwise(pre, c_prev)
        gates.copy_(g_new)
        c.copy_(c_new)
        h.copy_(h_new)

    @staticmethod
    def lstm_bwd(dh_out, dh_rec, dc, gates, c, c_prev, dG, dc_prev):
        """dh = dh_out + dh_rec is dL/dh_t, dc is dL/dc_t coming from step t+1 (acc). Writes the gradient of
        the gate pre-activations dG (B, 4H) and dL/dc_{t-1} (dc_prev may be dc itself: elementwise)."""
        acc = dc.dtype
        i, f, g, o = gates.chunk(4, 1)
        dh = dh_out.to(acc) + dh_rec.to(acc)
        tc = c.tanh()
        dct = dc + dh * o * (1 - tc * tc)
        di, df, dg, do = dct * g, dct * c_prev, dct * i, dh * tc
        dG.copy_(torch.cat([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], 1))
        dc_prev.copy_(dct * f)

    @staticmethod
    def gru_fwd(xg, hg, h_prev, ws, h):
        """xg, hg (B, 3H) input dtype; h_prev (B, H) -> ws (B, 4H) acc = [r, z, n, hn], h (B, H)."""
        ws_new, h_new = gru_pointwise(xg, hg, h_prev)
        ws.copy_(ws_new)
        h.copy_(h_new)

    @staticmethod
    def gru_bwd(dh_out, dh_rec, dh_dir, ws, h_prev, dGi, dGh, dh_dir_out):
        """dh = dh_out + dh_rec + dh_dir (dh_dir: the part of dL/dh_t that skips the GEMM, z * dh of step
        t+1). Writes dGi, dGh (B, 3H): gradients of the input and hidden pre-activations, and z * dh."""
        acc = dh_dir.dtype
        r, z, n, hn = ws.chunk(4, 1)
        dh = dh_out.to(acc) + dh_rec.to(acc) + dh_dir
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev.to(acc) - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        dGi.copy_(torch.cat([dr, dz, dn], 1))
        dGh.copy_(torch.cat([dr, dz, dn * r], 1))
        dh_dir_out.copy_(dh * z)


def _linear(x, w, b):
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


def lstm_input_gemm(x, w_ih, b_ih, b_hh):
    """x W_ih^T + (b_ih + b_hh): both LSTM biases are folded into the input projection, so that each step only
    has to add h W_hh^T -- which the GEMM does in place (beta = 1) into this buffer."""
    return torch.mm(x, w_ih.t()) if b_ih is None else torch.addmm(b_ih + b_hh, x, w_ih.t())


# --------------------------------------------------------------------------------------------------
# Cells: GEMMs through torch, the pointwise part through the backend's kernels (PW).
# --------------------------------------------------------------------------------------------------

@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def lstm_cell_driver(PW, x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    acc = acc_dtype(x.dtype)
    B, H = hx.shape
    gates = x.new_empty((B, 4 * H), dtype=acc)
    c = x.new_empty((B, H), dtype=acc)
    h = x.new_empty((B, H))
    pre = lstm_input_gemm(x, w_ih, b_ih, b_hh).addmm_(hx, w_hh.t())
    PW.lstm_fwd(pre, cx.to(acc).contiguous(), gates, c, h)
    return h, c.to(x.dtype), gates


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def lstm_cell_backward_driver(PW, grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx=True, need_dh=True):
    acc = gates.dtype
    gates = gates.contiguous()  # the kernels assume unit column stride in what the forward saved
    dG = x.new_empty(gates.shape)
    dc = grad_cy.to(acc).contiguous()  # a fresh tensor if grad_cy is not already acc: PW writes into it
    if dc is grad_cy:
        dc = dc.clone()
    PW.lstm_bwd(grad_hy.contiguous(), torch.zeros_like(grad_hy), dc, gates, cy.to(acc).contiguous(),
                cx.to(acc).contiguous(), dG, dc)
    db = dG.sum(0, dtype=acc).to(x.dtype)
    skipped = x.new_empty((0,))
    return (dG @ w_ih if need_dx else skipped, dG @ w_hh if need_dh else skipped, dc.to(x.dtype), dG.t() @ x,
            dG.t() @ hx, db)


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def gru_cell_driver(PW, x, hx, w_ih, w_hh, b_ih, b_hh):
    acc = acc_dtype(x.dtype)
    B, H = hx.shape
    ws = x.new_empty((B, 4 * H), dtype=acc)
    h = x.new_empty((B, H))
    PW.gru_fwd(_linear(x, w_ih, b_ih), _linear(hx, w_hh, b_hh), hx.contiguous(), ws, h)
    return h, ws


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def gru_cell_backward_driver(PW, grad_hy, x, hx, w_ih, w_hh, ws, need_dx=True, need_dh=True):
    acc = ws.dtype
    ws = ws.contiguous()
    B, H = hx.shape
    dGi = x.new_empty((B, 3 * H))
    dGh = x.new_empty((B, 3 * H))
    dh_dir = x.new_empty((B, H), dtype=acc)
    PW.gru_bwd(grad_hy.contiguous(), torch.zeros_like(grad_hy), torch.zeros_like(dh_dir), ws, hx.contiguous(),
               dGi, dGh, dh_dir)
    skipped = x.new_empty((0,))
    # dL/dhx: the part through the GEMM + the direct z * dh
    dhx = (dh_dir + (dGh @ w_hh).to(acc)).to(x.dtype) if need_dh else skipped
    return (dGi @ w_ih if need_dx else skipped, dhx, dGi.t() @ x, dGh.t() @ hx, dGi.sum(0, dtype=acc).to(x.dtype),
            dGh.sum(0, dtype=acc).to(x.dtype))


# --------------------------------------------------------------------------------------------------
# Whole sequences (the Python driver used by the reference and Triton backends; the C++ backends run the
# same loop in C++, see csrc/rnn_driver.h).
# --------------------------------------------------------------------------------------------------

def _time_order(T, d):
    return range(T) if d == 0 else range(T - 1, -1, -1)


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def seq_forward_driver(PW, kind, x, h0, c0, weights, mask, L, bidirectional, has_bias, need_reserve=True):
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = weights[1].shape[1]
    G = NGATES[kind]
    R = RESERVE_COLS[kind]
    acc = acc_dtype(x.dtype)
    x = x.contiguous()
    reserve = x.new_empty((L * D, T * B * R * H if need_reserve else 0), dtype=acc)
    if not need_reserve:  # per-step scratch: gates / ws (B, 4H) and two cell-state buffers (this step, previous)
        scratch = x.new_empty((B, 4 * H), dtype=acc)
        c_scratch = x.new_empty((2, B, H), dtype=acc)
    layer_outs = x.new_empty((max(L - 1, 0), T, B, D * H))
    hn = x.new_empty((L * D, B, H))
    cn = x.new_empty((L * D, B, H)) if kind == "lstm" else None
    inp = x
    out = None
    for layer in range(L):
        out = layer_outs[layer] if layer < L - 1 else x.new_empty((T, B, D * H))
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh = _split_weights(weights, k, has_bias)
            # 1) the input projections of every step in one GEMM
            inp2 = inp.reshape(T * B, -1)
            xg = lstm_input_gemm(inp2, w_ih, b_ih, b_hh) if kind == "lstm" else _linear(inp2, w_ih, b_ih)
            xg = xg.view(T, B, G * H)
            # W_hh^T made contiguous once: the per-step GEMM runs ~20% faster on it than on a transposed view
            w_hh_t = w_hh.t().contiguous()
            h_prev = h0[k]
            hcols = slice(d * H, (d + 1) * H)
            if kind == "lstm":
                if need_reserve:
                    gates = reserve[k, : T * B * 4 * H].view(T, B, 4 * H)
                    cs = reserve[k, T * B * 4 * H:].view(T, B, H)
                else:  # every step writes the same gate scratch; the cell states alternate between two buffers
                    gates, cs = scratch.expand(T, B, 4 * H), [None] * T
                    for s_, t in enumerate(_time_order(T, d)):
                        cs[t] = c_scratch[s_ % 2]
                c_prev = c0[k].to(acc).contiguous()
                for t in _time_order(T, d):  # 2) the recurrence: one GEMM + one fused kernel per step
                    PW.lstm_fwd(xg[t].addmm_(h_prev, w_hh_t), c_prev, gates[t], cs[t], out[t, :, hcols])
                    h_prev, c_prev = out[t, :, hcols], cs[t]
                cn[k] = c_prev
            else:
                ws = reserve[k].view(T, B, 4 * H) if need_reserve else scratch.expand(T, B, 4 * H)
                for t in _time_order(T, d):
                    hg = torch.mm(h_prev, w_hh_t) if b_hh is None else torch.addmm(b_hh, h_prev, w_hh_t)
                    PW.gru_fwd(xg[t], hg, h_prev, ws[t], out[t, :, hcols])
                    h_prev = out[t, :, hcols]
            hn[k] = h_prev
        inp = out if mask is None or layer == L - 1 else out * mask[layer]
    return out, hn, cn, reserve, layer_outs


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def seq_backward_driver(PW, kind, grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve,
                        layer_outs, L, bidirectional, has_bias, need_dx=True):
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = weights[1].shape[1]
    G = NGATES[kind]
    acc = acc_dtype(x.dtype)
    nw = 4 if has_bias else 2
    # reserve is read through views of its rows (unit column stride assumed); a directly called backward may
    # be handed strided tensors, which would be misread
    x, out, reserve, layer_outs = x.contiguous(), out.contiguous(), reserve.contiguous(), layer_outs.contiguous()
    grad_w: List[Optional[torch.Tensor]] = [None] * len(weights)
    g_h0 = h0.new_empty(h0.shape)
    g_c0 = c0.new_empty(c0.shape) if kind == "lstm" else None
    d_out = grad_out.contiguous()  # dL/d(output of the current layer), (T, B, D*H)
    d_inp = None
    for layer in reversed(range(L)):
        if layer == 0:
            inp = x
        else:
            inp = layer_outs[layer - 1] if mask is None else layer_outs[layer - 1] * mask[layer - 1]
        out_l = out if layer == L - 1 else layer_outs[layer]
        d_inp = None
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, _, _ = _split_weights(weights, k, has_bias)
            hcols = slice(d * H, (d + 1) * H)
            order = list(_time_order(T, d))
            dh_rec = grad_hn[k]  # dL/dh of the last step processed: the seed from h_n
            if kind == "lstm":
                gates = reserve[k, : T * B * 4 * H].view(T, B, 4 * H)
                cs = reserve[k, T * B * 4 * H:].view(T, B, H)
                c0k = c0[k].to(acc)
                dc = grad_cn[k].to(acc).clone()
                dG = x.new_empty((T, B, 4 * H))
                for j in reversed(range(T)):  # walk the steps in the reverse of the order they ran
                    t = order[j]
                    c_prev = cs[order[j - 1]] if j > 0 else c0k
                    PW.lstm_bwd(d_out[t, :, hcols], dh_rec, dc, gates[t], cs[t], c_prev, dG[t], dc)
                    dh_rec = dG[t] @ w_hh
                g_h0[k] = dh_rec
                g_c0[k] = dc
                dGi = dGh = dG
            else:
                ws = reserve[k].view(T, B, 4 * H)
                dh_dir = torch.zeros((B, H), dtype=acc, device=x.device)
                dGi = x.new_empty((T, B, 3 * H))
                dGh = x.new_empty((T, B, 3 * H))
                for j in reversed(range(T)):
                    t = order[j]
                    h_prev = out_l[order[j - 1], :, hcols] if j > 0 else h0[k]
                    PW.gru_bwd(d_out[t, :, hcols], dh_rec, dh_dir, ws[t], h_prev, dGi[t], dGh[t], dh_dir)
                    dh_rec = dGh[t] @ w_hh
                g_h0[k] = (dh_rec.to(acc) + dh_dir).to(x.dtype)
            # 3) weight gradients of this layer-direction: big GEMMs over all steps at once
            dGi2, dGh2 = dGi.view(T * B, G * H), dGh.view(T * B, G * H)
            grad_w[k * nw] = dGi2.t() @ inp.reshape(T * B, -1)
            # dW_hh = sum_t dGh[t]^T h_{t-1}: h_{t-1} is the previous step's output, h0 for the first step
            first, prev = (0, slice(0, T - 1)) if d == 0 else (T - 1, slice(1, T))
            rest = slice(1, T) if d == 0 else slice(0, T - 1)
            gw_hh = dGh[first].t() @ h0[k]
            if T > 1:
                gw_hh = torch.addmm(gw_hh, dGh[rest].reshape(-1, G * H).t(), out_l[prev, :, hcols].reshape(-1, H))
            grad_w[k * nw + 1] = gw_hh
            if has_bias:
                grad_w[k * nw + 2] = dGi2.sum(0, dtype=acc).to(x.dtype)
                grad_w[k * nw + 3] = dGh2.sum(0, dtype=acc).to(x.dtype)
            # 4) dL/d(layer input), summed over directions
            if layer > 0 or need_dx:
                d_inp = dGi2 @ w_ih if d_inp is None else torch.addmm(d_inp, dGi2, w_ih)
        if d_inp is None:
            return x.new_empty((0,)), g_h0, g_c0, grad_w
        d_inp = d_inp.view(T, B, -1)
        if layer > 0:
            d_out = d_inp if mask is None else d_inp * mask[layer - 1]
    return d_inp, g_h0, g_c0, grad_w


# --------------------------------------------------------------------------------------------------
# The reference backend: the drivers above with the plain-torch pointwise math.
# --------------------------------------------------------------------------------------------------

def lstm_cell_reference(x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    return lstm_cell_driver(RefPointwise, x, hx, cx, w_ih, w_hh, b_ih, b_hh)


def lstm_cell_backward_reference(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx, need_dh):
    return lstm_cell_backward_driver(RefPointwise, grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx,
                                     need_dh)


def gru_cell_reference(x, hx, w_ih, w_hh, b_ih, b_hh):
    return gru_cell_driver(RefPointwise, x, hx, w_ih, w_hh, b_ih, b_hh)


def gru_cell_backward_reference(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh):
    return gru_cell_backward_driver(RefPointwise, grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh)


def lstm_reference(x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, need_reserve=True):
    return seq_forward_driver(RefPointwise, "lstm", x, h0, c0, weights, mask, num_layers, bidirectional, has_bias,
                              need_reserve)


def lstm_backward_reference(grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                            num_layers, bidirectional, has_bias, need_dx):
    return seq_backward_driver(RefPointwise, "lstm", grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out,
                               reserve, layer_outs, num_layers, bidirectional, has_bias, need_dx)


def gru_reference(x, h0, weights, mask, num_layers, bidirectional, has_bias, need_reserve=True):
    out, hn, _, reserve, layer_outs = seq_forward_driver(RefPointwise, "gru", x, h0, None, weights, mask,
                                                         num_layers, bidirectional, has_bias, need_reserve)
    return out, hn, reserve, layer_outs


def gru_backward_reference(grad_out, grad_hn, x, h0, weights, mask, out, reserve, layer_outs, num_layers,
                           bidirectional, has_bias, need_dx):
    gx, gh0, _, gw = seq_backward_driver(RefPointwise, "gru", grad_out, grad_hn, None, x, h0, None, weights, mask,
                                         out, reserve, layer_outs, num_layers, bidirectional, has_bias, need_dx)
    return gx, gh0, gw


# --------------------------------------------------------------------------------------------------
# Backend tables
# --------------------------------------------------------------------------------------------------

def _triton(name):
    def load():
        from ..kernels import rnn as k

        return getattr(k, f"{name}_triton")

    return load


_REF = {
    "lstm_cell": lstm_cell_reference, "lstm_cell_backward": lstm_cell_backward_reference,
    "gru_cell": gru_cell_reference, "gru_cell_backward": gru_cell_backward_reference,
    "lstm": lstm_reference, "lstm_backward": lstm_backward_reference,
    "gru": gru_reference, "gru_backward": gru_backward_reference,
}

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
# Autograd: the backward of every op is itself a backend-dispatched pydl op
# --------------------------------------------------------------------------------------------------

# Second derivatives (a gradient penalty, gradgradcheck, any backward run with create_graph=True).
# The first-order backward ops above are kernels: their outputs carry no graph, so differentiating them
# again would silently give zeros. When autograd runs a backward with grad mode on (which it does exactly
# when create_graph=True), the backward instead recomputes the forward from the saved inputs with the
# differentiable torch code below and differentiates that with create_graph=True. That is exact (the same
# formulas; autograd derives every higher derivative from them) and costs one extra forward, paid only by the
# callers that asked for a differentiable gradient; ordinary training keeps the fused backward kernels.

def cell_autograd(kind, x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    """One cell step in differentiable torch: (hy, cy) for the LSTM, (hy,) for the GRU."""
    if kind == "lstm":
        pre = lstm_input_gemm(x, w_ih, b_ih, b_hh) + torch.mm(hx, w_hh.t())
        _, c, h = lstm_pointwise(pre, cx.to(acc_dtype(x.dtype)))
        return h, c.to(x.dtype)
    _, h = gru_pointwise(_linear(x, w_ih, b_ih), _linear(hx, w_hh, b_hh), hx)
    return (h,)


def seq_autograd(kind, x, h0, c0, weights, mask, L, bidirectional, has_bias):
    """A whole sequence in differentiable torch, step by step: (out, hn, cn) for the LSTM, (out, hn) for the
    GRU -- the same computation as seq_forward_driver without the preallocated buffers (autograd needs every
    intermediate as its own tensor)."""
    T, B = x.shape[0], x.shape[1]
    D = 2 if bidirectional else 1
    acc = acc_dtype(x.dtype)
    inp, hn, cn = x, [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh = _split_weights(weights, k, has_bias)
            inp2 = inp.reshape(T * B, -1)
            xg = lstm_input_gemm(inp2, w_ih, b_ih, b_hh) if kind == "lstm" else _linear(inp2, w_ih, b_ih)
            xg = xg.view(T, B, -1)
            h, c = h0[k], (c0[k].to(acc) if kind == "lstm" else None)
            hs = [None] * T
            for t in _time_order(T, d):
                if kind == "lstm":
                    _, c, h = lstm_pointwise(xg[t] + torch.mm(h, w_hh.t()), c)
                else:
                    _, h = gru_pointwise(xg[t], _linear(h, w_hh, b_hh), h)
                hs[t] = h
            outs.append(torch.stack(hs))
            hn.append(h)
            cn.append(c)
        out = torch.cat(outs, 2)
        inp = out if mask is None or layer == L - 1 else out * mask[layer]
    if kind == "lstm":
        return out, torch.stack(hn), torch.stack(cn).to(x.dtype)
    return out, torch.stack(hn)


def _differentiable_grads(recompute, inputs, grad_outputs):
    """Gradients of ``recompute()``'s outputs w.r.t. those of ``inputs`` that require grad (None for the
    others), as differentiable tensors: the double-backward path (see above)."""
    with torch.enable_grad():
        outs = recompute()
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    if not pairs or not wanted:
        return [None] * len(inputs)
    grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                     allow_unused=True, materialize_grads=True))
    return [next(grads) if t is not None and t.requires_grad else None for t in inputs]


def _zeros_if_none(g, like):
    return torch.zeros_like(like) if g is None else g


def _lstm_cell_setup(ctx, inputs, output):
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, backend = inputs
    _, cy, gates = output
    ctx.save_for_backward(x, hx, cx, w_ih, w_hh, gates, cy, b_ih, b_hh)
    ctx.has_bias = b_ih is not None
    ctx.backend = backend
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for `gates` (and hy/cy when unused)


def _lstm_cell_bwd(ctx, g_hy, g_cy, _g_gates):
    x, hx, cx, w_ih, w_hh, gates, cy, b_ih, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient (see cell_autograd)
        inputs = (x, hx, cx, w_ih, w_hh, b_ih, b_hh)
        return (*_differentiable_grads(lambda: cell_autograd("lstm", *inputs), inputs, (g_hy, g_cy)), None)
    g_hy, g_cy = _zeros_if_none(g_hy, hx), _zeros_if_none(g_cy, cx)
    need_dx, need_dh = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, ghx, gcx, gwi, gwh, gb = torch.ops.pydl.lstm_cell_backward(g_hy, g_cy, x, hx, cx, w_ih, w_hh, gates, cy,
                                                                  need_dx, need_dh, ctx.backend)
    gx, ghx = (gx if need_dx else None), (ghx if need_dh else None)
    gb_ih, gb_hh = (gb, gb) if ctx.has_bias else (None, None)
    return gx, ghx, gcx, gwi, gwh, gb_ih, gb_hh, None


torch.library.register_autograd("pydl::lstm_cell", _lstm_cell_bwd, setup_context=_lstm_cell_setup)


def _gru_cell_setup(ctx, inputs, output):
    x, hx, w_ih, w_hh, b_ih, b_hh, backend = inputs
    _, ws = output
    ctx.save_for_backward(x, hx, w_ih, w_hh, ws, b_ih, b_hh)
    ctx.has_bias = b_ih is not None
    ctx.backend = backend
    ctx.mark_non_differentiable(ws)
    ctx.set_materialize_grads(False)


def _gru_cell_bwd(ctx, g_hy, _g_ws):
    x, hx, w_ih, w_hh, ws, b_ih, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient (see cell_autograd)
        inputs = (x, hx, w_ih, w_hh, b_ih, b_hh)
        return (*_differentiable_grads(lambda: cell_autograd("gru", x, hx, None, w_ih, w_hh, b_ih, b_hh), inputs,
                                       (g_hy,)), None)
    g_hy = _zeros_if_none(g_hy, hx)
    need_dx, need_dh = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, ghx, gwi, gwh, gbi, gbh = torch.ops.pydl.gru_cell_backward(g_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh,
                                                                  ctx.backend)
    gx, ghx = (gx if need_dx else None), (ghx if need_dh else None)
    if not ctx.has_bias:
        gbi = gbh = None
    return gx, ghx, gwi, gwh, gbi, gbh, None


torch.library.register_autograd("pydl::gru_cell", _gru_cell_bwd, setup_context=_gru_cell_setup)


def _need_reserve(ctx):
    if not ctx.need_reserve:
        raise RuntimeError("pydl: this recurrent forward ran with need_reserve=False (nothing saved for a "
                           "backward); call it with need_reserve=True when gradients are needed")


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve = inputs
    ctx.need_reserve = need_reserve
    out, _, _, reserve, layer_outs = output
    ctx.save_for_backward(x, h0, c0, mask, out, reserve, layer_outs, *weights)
    ctx.cfg = (num_layers, bidirectional, has_bias)
    ctx.backend = backend
    ctx.mark_non_differentiable(reserve, layer_outs)
    # Without this autograd hands the backward a zero-filled gradient for every unused output -- including
    # the (L*D, T*B*5H) reserve: a memset as large as all the saved activations, every step.
    ctx.set_materialize_grads(False)


def _lstm_bwd(ctx, g_out, g_hn, g_cn, _g_reserve, _g_layer_outs):
    _need_reserve(ctx)
    x, h0, c0, mask, out, reserve, layer_outs, *weights = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient (see cell_autograd)
        gx, gh0, gc0, *gw = _differentiable_grads(
            lambda: seq_autograd("lstm", x, h0, c0, weights, mask, *ctx.cfg), (x, h0, c0, *weights),
            (g_out, g_hn, g_cn))
        return gx, gh0, gc0, gw, None, None, None, None, None, None
    g_out, g_hn, g_cn = _zeros_if_none(g_out, out), _zeros_if_none(g_hn, h0), _zeros_if_none(g_cn, c0)
    gx, gh0, gc0, gw = torch.ops.pydl.lstm_backward(g_out, g_hn, g_cn, x, h0, c0, weights, mask, out, reserve,
                                                    layer_outs, *ctx.cfg, ctx.needs_input_grad[0], ctx.backend)
    return gx if ctx.needs_input_grad[0] else None, gh0, gc0, list(gw), None, None, None, None, None, None


torch.library.register_autograd("pydl::lstm", _lstm_bwd, setup_context=_lstm_setup)


def _gru_setup(ctx, inputs, output):
    x, h0, weights, mask, num_layers, bidirectional, has_bias, backend, need_reserve = inputs
    ctx.need_reserve = need_reserve
    out, _, reserve, layer_outs = output
    ctx.save_for_backward(x, h0, mask, out, reserve, layer_outs, *weights)
    ctx.cfg = (num_layers, bidirectional, has_bias)
    ctx.backend = backend
    ctx.mark_non_differentiable(reserve, layer_outs)
    ctx.set_materialize_grads(False)  # see _lstm_setup


def _gru_bwd(ctx, g_out, g_hn, _g_reserve, _g_layer_outs):
    _need_reserve(ctx)
    x, h0, mask, out, reserve, layer_outs, *weights = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient (see cell_autograd)
        gx, gh0, *gw = _differentiable_grads(lambda: seq_autograd("gru", x, h0, None, weights, mask, *ctx.cfg),
                                             (x, h0, *weights), (g_out, g_hn))
        return gx, gh0, gw, None, None, None, None, None, None
    g_out, g_hn = _zeros_if_none(g_out, out), _zeros_if_none(g_hn, h0)
    gx, gh0, gw = torch.ops.pydl.gru_backward(g_out, g_hn, x, h0, weights, mask, out, reserve, layer_outs,
                                              *ctx.cfg, ctx.needs_input_grad[0], ctx.backend)
    return gx if ctx.needs_input_grad[0] else None, gh0, list(gw), None, None, None, None, None, None


torch.library.register_autograd("pydl::gru", _gru_bwd, setup_context=_gru_setup)


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


def lstm_cell(x, hx=None, cx=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, backend: Optional[str] = None):
    """One LSTM step (torch.nn.LSTMCell's math): returns ``(hy, cy)``. ``x`` (B, I); ``hx``, ``cx`` (B, H)
    (zeros if None); ``w_ih`` (4H, I), ``w_hh`` (4H, H); biases (4H,) or None.

    Batch 0, hidden size 0 and input size 0 give torch's results (empty outputs; zeros from an empty input
    projection). Differences from torch.nn.functional: only 2-D ``x`` (the module pydl.nn.LSTMCell takes
    unbatched 1-D input, as torch's does); every tensor must share ``x``'s dtype and device (no promotion).
    Second derivatives are exact: a backward run with ``create_graph=True`` recomputes the step with
    differentiable torch ops (see "Second derivatives" in the source), one extra forward's cost."""
    _check_public_cell("lstm_cell", x, w_ih, w_hh)
    H = w_hh.shape[1]
    hx = x.new_zeros((x.shape[0], H)) if hx is None else hx
    cx = x.new_zeros((x.shape[0], H)) if cx is None else cx
    hy, cy, _ = torch.ops.pydl.lstm_cell(x, hx, cx, w_ih, w_hh, b_ih, b_hh, _backend(backend))
    return hy, cy


def gru_cell(x, hx=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, backend: Optional[str] = None):
    """One GRU step (torch.nn.GRUCell's math): returns ``hy``. Shapes, empty sizes, dtype rules and second
    derivatives as for :func:`lstm_cell` (3H gate rows instead of 4H)."""
    _check_public_cell("gru_cell", x, w_ih, w_hh)
    hx = x.new_zeros((x.shape[0], w_hh.shape[1])) if hx is None else hx
    hy, _ = torch.ops.pydl.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh, _backend(backend))
    return hy


def dropout_masks(x_like, num_layers, T, B, DH, p) -> Optional[torch.Tensor]:
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


def lstm(x: torch.Tensor, weights: Sequence[torch.Tensor], h0=None, c0=None, num_layers: int = 1,
         bidirectional: bool = False, batch_first: bool = False, has_bias: Optional[bool] = None,
         dropout: float = 0.0, training: bool = False, backend: Optional[str] = None):
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


def gru(x: torch.Tensor, weights: Sequence[torch.Tensor], h0=None, num_layers: int = 1, bidirectional: bool = False,
        batch_first: bool = False, has_bias: Optional[bool] = None, dropout: float = 0.0, training: bool = False,
        backend: Optional[str] = None):
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
