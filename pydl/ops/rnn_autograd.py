"""Autograd of the rnn ops: the backward of every op is itself a backend-dispatched pydl op.

pydl/ops/rnn.py registers these (``AUTOGRAD``) on its ops once their schemas are defined; they live apart so
that the op module holds the schemas, backend tables, dispatch and public functions, and this one the
gradient formulas and the double-backward recompute.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch

from .._layout import acc_dtype
from .rnn_driver import gru_pointwise, linear, lstm_input_gemm, lstm_pointwise, split_weights, time_order

# Second derivatives (a gradient penalty, gradgradcheck, any backward run with create_graph=True).
# The first-order backward ops are kernels: their outputs carry no graph, so differentiating them
# again would silently give zeros. When autograd runs a backward with grad mode on (which it does exactly
# when create_graph=True), the backward instead recomputes the forward from the saved inputs with the
# differentiable torch code below and differentiates that with create_graph=True. That is exact (the same
# formulas; autograd derives every higher derivative from them) and costs one extra forward, paid only by the
# callers that asked for a differentiable gradient; ordinary training keeps the fused backward kernels.

def cell_autograd(kind: str, x: torch.Tensor, hx: torch.Tensor, cx: Optional[torch.Tensor], w_ih: torch.Tensor,
                  w_hh: torch.Tensor, b_ih: Optional[torch.Tensor],
                  b_hh: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """One cell step in differentiable torch: (hy, cy) for the LSTM, (hy,) for the GRU."""
    if kind == "lstm":
        pre = lstm_input_gemm(x, w_ih, b_ih, b_hh) + torch.mm(hx, w_hh.t())
        _, c, h = lstm_pointwise(pre, cx.to(acc_dtype(x.dtype)))
        return h, c.to(x.dtype)
    _, h = gru_pointwise(linear(x, w_ih, b_ih), linear(hx, w_hh, b_hh), hx)
    return (h,)


def seq_autograd(kind: str, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
                 weights: Sequence[torch.Tensor], mask: Optional[torch.Tensor], L: int, bidirectional: bool,
                 has_bias: bool) -> Tuple[torch.Tensor, ...]:
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
            w_ih, w_hh, b_ih, b_hh = split_weights(weights, k, has_bias)
            inp2 = inp.reshape(T * B, -1)
            xg = lstm_input_gemm(inp2, w_ih, b_ih, b_hh) if kind == "lstm" else linear(inp2, w_ih, b_ih)
            xg = xg.view(T, B, -1)
            h, c = h0[k], (c0[k].to(acc) if kind == "lstm" else None)
            hs = [None] * T
            for t in time_order(T, d):
                if kind == "lstm":
                    _, c, h = lstm_pointwise(xg[t] + torch.mm(h, w_hh.t()), c)
                else:
                    _, h = gru_pointwise(xg[t], linear(h, w_hh, b_hh), h)
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


# op name -> (backward, setup_context), for torch.library.register_autograd
AUTOGRAD: dict[str, tuple[Callable, Callable]] = {
    "lstm_cell": (_lstm_cell_bwd, _lstm_cell_setup),
    "gru_cell": (_gru_cell_bwd, _gru_cell_setup),
    "lstm": (_lstm_bwd, _lstm_setup),
    "gru": (_gru_bwd, _gru_setup),
}
