"""The Python twin of csrc/rnn_driver.h: the LSTM/GRU time loops, their argument checks, and the pointwise
math of the reference backend.

A layer-direction runs one GEMM for the input projections of all T steps, then per step one small GEMM and
one fused pointwise kernel (docs/ARCHITECTURE.md, "Recurrent layers share one driver"; the shape of the whole
computation is in pydl/ops/rnn.py's docstring). The drivers take the pointwise kernels as a parameter ``PW``,
a class with ``lstm_fwd``, ``lstm_bwd``, ``gru_fwd`` and ``gru_bwd`` (the signatures of :class:`RefPointwise`):
the reference backend passes :class:`RefPointwise` (plain torch), the Triton backend
``pydl.kernels.rnn.TritonPointwise``. :func:`implementations` turns one such class into the eight ops'
implementations, which is all a Python backend of the rnn ops is.

The checks validate what the ops receive (the C++ backends repeat them in csrc/rnn_driver.h, since a compiled
op can be called directly).
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .._layout import acc_dtype
from ._common import check_floating

NGATES = {"lstm": 4, "gru": 3}
RESERVE_COLS = {"lstm": 5, "gru": 4}  # per (t, b) row, in units of H

# What the sequence drivers return: (out, hn, cn, reserve, layer_outs) and (grad_x, grad_h0, grad_c0,
# grad_weights); the cell-state slots are None for the GRU.
SeqForward = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]
SeqBackward = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]


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


def check_cell(kind: str, x: torch.Tensor, hx: torch.Tensor, cx: Optional[torch.Tensor], w_ih: torch.Tensor,
               w_hh: torch.Tensor, b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
               op: Optional[str] = None) -> None:
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


def check_cell_backward(kind: str, grad_hy: torch.Tensor, grad_cy: Optional[torch.Tensor], x: torch.Tensor,
                        hx: torch.Tensor, cx: Optional[torch.Tensor], w_ih: torch.Tensor, w_hh: torch.Tensor,
                        saved: torch.Tensor, cy: Optional[torch.Tensor]) -> None:
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


def check_seq_backward(kind: str, grad_out: torch.Tensor, grad_hn: torch.Tensor, grad_cn: Optional[torch.Tensor],
                       x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], weights: Sequence[torch.Tensor],
                       mask: Optional[torch.Tensor], out: torch.Tensor, reserve: torch.Tensor, layer_outs: torch.Tensor,
                       num_layers: int, bidirectional: bool, has_bias: bool) -> None:
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


def check_seq(kind: str, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], weights: Sequence[torch.Tensor],
              mask: Optional[torch.Tensor], num_layers: int, bidirectional: bool, has_bias: bool,
              op: Optional[str] = None) -> Tuple[int, int, int, int, int]:
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


def split_weights(weights: Sequence[torch.Tensor], k: int,
                  has_bias: bool) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    nw = 4 if has_bias else 2
    w = weights[k * nw: (k + 1) * nw]
    return (w[0], w[1], w[2], w[3]) if has_bias else (w[0], w[1], None, None)


# --------------------------------------------------------------------------------------------------
# The pointwise math, in plain torch (the reference backend's kernels; readable ground truth).
# Every function writes into the output tensors it is given, like the compiled kernels do, so that one
# sequence driver (below) serves the reference and the Triton backends alike.
# --------------------------------------------------------------------------------------------------

def lstm_pointwise(pre: torch.Tensor, c_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LSTM step's pointwise math in plain, differentiable torch: pre (B, 4H) the summed gate
    pre-activations (input dtype), c_prev (B, H) acc -> (gates (B, 4H) activated, c (B, H) acc, h (B, H) in
    pre's dtype). Shared by the reference kernels below and the double-backward recompute (pydl/ops/rnn_autograd.py)."""
    acc = c_prev.dtype
    i, f, g, o = pre.to(acc).chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_prev + i * g
    return torch.cat([i, f, g, o], 1), c, (o * c.tanh()).to(pre.dtype)


def gru_pointwise(xg: torch.Tensor, hg: torch.Tensor, h_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


def lstm_input_gemm(x: torch.Tensor, w_ih: torch.Tensor, b_ih: Optional[torch.Tensor],
                    b_hh: Optional[torch.Tensor]) -> torch.Tensor:
    """x W_ih^T + (b_ih + b_hh): both LSTM biases are folded into the input projection, so that each step only
    has to add h W_hh^T -- which the GEMM does in place (beta = 1) into this buffer."""
    return torch.mm(x, w_ih.t()) if b_ih is None else torch.addmm(b_ih + b_hh, x, w_ih.t())


# --------------------------------------------------------------------------------------------------
# Cells: GEMMs through torch, the pointwise part through the backend's kernels (PW).
# --------------------------------------------------------------------------------------------------

@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def lstm_cell_driver(PW: type, x: torch.Tensor, hx: torch.Tensor, cx: Optional[torch.Tensor], w_ih: torch.Tensor,
                     w_hh: torch.Tensor, b_ih: Optional[torch.Tensor],
                     b_hh: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = acc_dtype(x.dtype)
    B, H = hx.shape
    gates = x.new_empty((B, 4 * H), dtype=acc)
    c = x.new_empty((B, H), dtype=acc)
    h = x.new_empty((B, H))
    pre = lstm_input_gemm(x, w_ih, b_ih, b_hh).addmm_(hx, w_hh.t())
    PW.lstm_fwd(pre, cx.to(acc).contiguous(), gates, c, h)
    return h, c.to(x.dtype), gates


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def lstm_cell_backward_driver(PW: type, grad_hy: torch.Tensor, grad_cy: Optional[torch.Tensor], x: torch.Tensor,
                              hx: torch.Tensor, cx: Optional[torch.Tensor], w_ih: torch.Tensor, w_hh: torch.Tensor,
                              gates: torch.Tensor, cy: Optional[torch.Tensor], need_dx: bool = True,
                              need_dh: bool = True) -> Tuple[torch.Tensor, ...]:
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
def gru_cell_driver(PW: type, x: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                    b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    acc = acc_dtype(x.dtype)
    B, H = hx.shape
    ws = x.new_empty((B, 4 * H), dtype=acc)
    h = x.new_empty((B, H))
    PW.gru_fwd(linear(x, w_ih, b_ih), linear(hx, w_hh, b_hh), hx.contiguous(), ws, h)
    return h, ws


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def gru_cell_backward_driver(PW: type, grad_hy: torch.Tensor, x: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor,
                             w_hh: torch.Tensor, ws: torch.Tensor, need_dx: bool = True,
                             need_dh: bool = True) -> Tuple[torch.Tensor, ...]:
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

def time_order(T: int, d: int) -> range:
    return range(T) if d == 0 else range(T - 1, -1, -1)


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def seq_forward_driver(PW: type, kind: str, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
                       weights: Sequence[torch.Tensor], mask: Optional[torch.Tensor], L: int, bidirectional: bool,
                       has_bias: bool, need_reserve: bool = True) -> SeqForward:
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
            w_ih, w_hh, b_ih, b_hh = split_weights(weights, k, has_bias)
            # 1) the input projections of every step in one GEMM
            inp2 = inp.reshape(T * B, -1)
            xg = lstm_input_gemm(inp2, w_ih, b_ih, b_hh) if kind == "lstm" else linear(inp2, w_ih, b_ih)
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
                    for s_, t in enumerate(time_order(T, d)):
                        cs[t] = c_scratch[s_ % 2]
                c_prev = c0[k].to(acc).contiguous()
                for t in time_order(T, d):  # 2) the recurrence: one GEMM + one fused kernel per step
                    PW.lstm_fwd(xg[t].addmm_(h_prev, w_hh_t), c_prev, gates[t], cs[t], out[t, :, hcols])
                    h_prev, c_prev = out[t, :, hcols], cs[t]
                cn[k] = c_prev
            else:
                ws = reserve[k].view(T, B, 4 * H) if need_reserve else scratch.expand(T, B, 4 * H)
                for t in time_order(T, d):
                    hg = torch.mm(h_prev, w_hh_t) if b_hh is None else torch.addmm(b_hh, h_prev, w_hh_t)
                    PW.gru_fwd(xg[t], hg, h_prev, ws[t], out[t, :, hcols])
                    h_prev = out[t, :, hcols]
            hn[k] = h_prev
        inp = out if mask is None or layer == L - 1 else out * mask[layer]
    return out, hn, cn, reserve, layer_outs


@torch.no_grad()  # a kernel, not a graph: direct calls on tensors that require grad record nothing
def seq_backward_driver(PW: type, kind: str, grad_out: torch.Tensor, grad_hn: torch.Tensor,
                        grad_cn: Optional[torch.Tensor], x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
                        weights: Sequence[torch.Tensor], mask: Optional[torch.Tensor], out: torch.Tensor,
                        reserve: torch.Tensor, layer_outs: torch.Tensor, L: int, bidirectional: bool, has_bias: bool,
                        need_dx: bool = True) -> SeqBackward:
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = weights[1].shape[1]
    G = NGATES[kind]
    acc = acc_dtype(x.dtype)
    nw = 4 if has_bias else 2
    # reserve is read through views of its rows (unit column stride assumed); a directly called backward may
    # be handed strided tensors, which would be misread
    x, out, reserve, layer_outs = x.contiguous(), out.contiguous(), reserve.contiguous(), layer_outs.contiguous()
    grad_w: list[Optional[torch.Tensor]] = [None] * len(weights)
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
            w_ih, w_hh, _, _ = split_weights(weights, k, has_bias)
            hcols = slice(d * H, (d + 1) * H)
            order = list(time_order(T, d))
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
# The eight ops for one set of pointwise kernels
# --------------------------------------------------------------------------------------------------

def lstm_seq(PW: type, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], weights: Sequence[torch.Tensor],
             mask: Optional[torch.Tensor], num_layers: int, bidirectional: bool, has_bias: bool,
             need_reserve: bool = True) -> Tuple[torch.Tensor, ...]:
    return seq_forward_driver(PW, "lstm", x, h0, c0, weights, mask, num_layers, bidirectional, has_bias,
                              need_reserve)


def lstm_seq_backward(PW: type, grad_out: torch.Tensor, grad_hn: torch.Tensor, grad_cn: Optional[torch.Tensor],
                      x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], weights: Sequence[torch.Tensor],
                      mask: Optional[torch.Tensor], out: torch.Tensor, reserve: torch.Tensor, layer_outs: torch.Tensor,
                      num_layers: int, bidirectional: bool, has_bias: bool,
                      need_dx: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[torch.Tensor]]:
    return seq_backward_driver(PW, "lstm", grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve,
                               layer_outs, num_layers, bidirectional, has_bias, need_dx)


def gru_seq(PW: type, x: torch.Tensor, h0: torch.Tensor, weights: Sequence[torch.Tensor], mask: Optional[torch.Tensor],
            num_layers: int, bidirectional: bool, has_bias: bool,
            need_reserve: bool = True) -> Tuple[torch.Tensor, ...]:
    # the GRU has no cell state: the driver's cn slot is dropped, as the op's schema has none
    out, hn, _, reserve, layer_outs = seq_forward_driver(PW, "gru", x, h0, None, weights, mask, num_layers,
                                                         bidirectional, has_bias, need_reserve)
    return out, hn, reserve, layer_outs


def gru_seq_backward(PW: type, grad_out: torch.Tensor, grad_hn: torch.Tensor, x: torch.Tensor, h0: torch.Tensor,
                     weights: Sequence[torch.Tensor], mask: Optional[torch.Tensor], out: torch.Tensor,
                     reserve: torch.Tensor, layer_outs: torch.Tensor, num_layers: int, bidirectional: bool,
                     has_bias: bool, need_dx: bool) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
    gx, gh0, _, gw = seq_backward_driver(PW, "gru", grad_out, grad_hn, None, x, h0, None, weights, mask, out,
                                         reserve, layer_outs, num_layers, bidirectional, has_bias, need_dx)
    return gx, gh0, gw


# op name -> its driver; each takes PW first, then the op's arguments without ``backend``
DRIVERS: dict[str, Callable] = {
    "lstm_cell": lstm_cell_driver, "lstm_cell_backward": lstm_cell_backward_driver,
    "gru_cell": gru_cell_driver, "gru_cell_backward": gru_cell_backward_driver,
    "lstm": lstm_seq, "lstm_backward": lstm_seq_backward,
    "gru": gru_seq, "gru_backward": gru_seq_backward,
}


def implementations(PW: type) -> dict[str, Callable]:
    """The eight rnn ops' implementations (op name -> callable with the op's arguments, ``backend`` aside)
    for the pointwise kernels ``PW``."""
    return {name: functools.partial(fn, PW) for name, fn in DRIVERS.items()}
