"""LSTM / GRU in Triton: the fused gate pointwise kernels, forward and backward.

What is Triton here and what is not: the four kernels below are the whole pointwise part of a step (every
sigmoid/tanh, the cell update, the gate gradients); the GEMMs (the input projection of all steps at once, the
per-step ``h W_hh^T``, the weight gradients) are ``torch.mm`` / ``addmm`` calls (cuBLAS on a GPU), made from
the Python driver loop that pydl/ops/rnn.py shares with the reference backend. So one sequence is one
``torch.ops.pydl.lstm`` call, inside which Python walks the time steps (a GEMM and one Triton launch each).
A persistent kernel that keeps W_hh on chip for all steps is the next step for small hidden sizes; it is not
written yet.

Each kernel covers a (BLOCK_B x BLOCK_H) tile of the (batch, hidden) plane; the gates of a column j live at
columns j, H + j, 2H + j, 3H + j of the (B, 4H) gate rows, so one program reads all four gates of its tile
and needs nobody else's data: no reductions, no atomics. Rows are addressed with explicit row strides (the
hidden state of direction d is a strided slice of the (T, B, D*H) output), columns are contiguous.

Math is in fp32 (fp64 for fp64 tensors): the interpreter cannot do bf16 arithmetic, and neither should a
recurrence. No libdevice: tanh(x) = 2 * sigmoid(2x) - 1, sigmoid(x) = 1 / (1 + exp(-x)) (exp(+inf) = inf
gives exactly 0 or 1 at the extremes, never NaN).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops import rnn as R
from ._jit import gpu_twin, jit


@jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@jit
def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :]
    return rb.to(tl.int64), rh, (rb < B) & (rh < H)


@jit
def _lstm_fwd_kernel(pre, s_pre, cp, s_cp, gates, s_g, c, s_c, h, s_h, B, H,
                     ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rh, m = _tile(B, H, BLOCK_B, BLOCK_H)
    # the pre-activations (x W_ih^T + h W_hh^T + biases, summed by the GEMMs), gate k at column k*H + j
    pp = pre + rb * s_pre + rh
    i = tl.load(pp, mask=m, other=0.0).to(ACC)
    f = tl.load(pp + H, mask=m, other=0.0).to(ACC)
    g = tl.load(pp + 2 * H, mask=m, other=0.0).to(ACC)
    o = tl.load(pp + 3 * H, mask=m, other=0.0).to(ACC)
    i, f, g, o = _sigmoid(i), _sigmoid(f), _tanh(g), _sigmoid(o)
    c_new = f * tl.load(cp + rb * s_cp + rh, mask=m, other=0.0).to(ACC) + i * g
    pg = gates + rb * s_g + rh
    tl.store(pg, i, mask=m)
    tl.store(pg + H, f, mask=m)
    tl.store(pg + 2 * H, g, mask=m)
    tl.store(pg + 3 * H, o, mask=m)
    tl.store(c + rb * s_c + rh, c_new, mask=m)
    tl.store(h + rb * s_h + rh, (o * _tanh(c_new)).to(h.dtype.element_ty), mask=m)


@jit
def _lstm_bwd_kernel(dho, s_dho, dhr, s_dhr, dc, s_dc, gates, s_g, c, s_c, cp, s_cp, dG, s_dG, dcp, s_dcp, B, H,
                     ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rh, m = _tile(B, H, BLOCK_B, BLOCK_H)
    pg = gates + rb * s_g + rh
    i = tl.load(pg, mask=m, other=0.0)
    f = tl.load(pg + H, mask=m, other=0.0)
    g = tl.load(pg + 2 * H, mask=m, other=0.0)
    o = tl.load(pg + 3 * H, mask=m, other=0.0)
    dh = tl.load(dho + rb * s_dho + rh, mask=m, other=0.0).to(ACC) + \
        tl.load(dhr + rb * s_dhr + rh, mask=m, other=0.0).to(ACC)
    tc = _tanh(tl.load(c + rb * s_c + rh, mask=m, other=0.0))
    # dL/dc_t: from step t+1 (dc) and through h_t = o tanh(c_t)
    dct = tl.load(dc + rb * s_dc + rh, mask=m, other=0.0) + dh * o * (1.0 - tc * tc)
    c_prev = tl.load(cp + rb * s_cp + rh, mask=m, other=0.0)
    # gradients of the pre-activations: d sigmoid = s (1 - s), d tanh = 1 - t^2
    pd = dG + rb * s_dG + rh
    ty = dG.dtype.element_ty
    tl.store(pd, (dct * g * i * (1.0 - i)).to(ty), mask=m)
    tl.store(pd + H, (dct * c_prev * f * (1.0 - f)).to(ty), mask=m)
    tl.store(pd + 2 * H, (dct * i * (1.0 - g * g)).to(ty), mask=m)
    tl.store(pd + 3 * H, (dh * tc * o * (1.0 - o)).to(ty), mask=m)
    tl.store(dcp + rb * s_dcp + rh, dct * f, mask=m)


@jit
def _gru_fwd_kernel(xg, s_xg, hg, s_hg, hp, s_hp, ws, s_ws, h, s_h, B, H,
                    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rh, m = _tile(B, H, BLOCK_B, BLOCK_H)
    px, ph = xg + rb * s_xg + rh, hg + rb * s_hg + rh
    r = _sigmoid(tl.load(px, mask=m, other=0.0).to(ACC) + tl.load(ph, mask=m, other=0.0).to(ACC))
    z = _sigmoid(tl.load(px + H, mask=m, other=0.0).to(ACC) + tl.load(ph + H, mask=m, other=0.0).to(ACC))
    hn = tl.load(ph + 2 * H, mask=m, other=0.0).to(ACC)  # W_hn h + b_hn: r gates it, the backward needs it
    n = _tanh(tl.load(px + 2 * H, mask=m, other=0.0).to(ACC) + r * hn)
    h_prev = tl.load(hp + rb * s_hp + rh, mask=m, other=0.0).to(ACC)
    pw = ws + rb * s_ws + rh
    tl.store(pw, r, mask=m)
    tl.store(pw + H, z, mask=m)
    tl.store(pw + 2 * H, n, mask=m)
    tl.store(pw + 3 * H, hn, mask=m)
    tl.store(h + rb * s_h + rh, ((1.0 - z) * n + z * h_prev).to(h.dtype.element_ty), mask=m)


@jit
def _gru_bwd_kernel(dho, s_dho, dhr, s_dhr, dhd, s_dhd, ws, s_ws, hp, s_hp, dGi, s_dGi, dGh, s_dGh, dhdo, s_dhdo,
                    B, H, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rh, m = _tile(B, H, BLOCK_B, BLOCK_H)
    pw = ws + rb * s_ws + rh
    r = tl.load(pw, mask=m, other=0.0)
    z = tl.load(pw + H, mask=m, other=0.0)
    n = tl.load(pw + 2 * H, mask=m, other=0.0)
    hn = tl.load(pw + 3 * H, mask=m, other=0.0)
    # dL/dh_t = from the layer above (dho) + through W_hh of step t+1 (dhr) + directly through z h_t (dhd)
    dh = tl.load(dho + rb * s_dho + rh, mask=m, other=0.0).to(ACC) + \
        tl.load(dhr + rb * s_dhr + rh, mask=m, other=0.0).to(ACC) + tl.load(dhd + rb * s_dhd + rh, mask=m, other=0.0)
    h_prev = tl.load(hp + rb * s_hp + rh, mask=m, other=0.0).to(ACC)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    ty = dGi.dtype.element_ty
    pi, ph = dGi + rb * s_dGi + rh, dGh + rb * s_dGh + rh
    tl.store(pi, dr.to(ty), mask=m)
    tl.store(pi + H, dz.to(ty), mask=m)
    tl.store(pi + 2 * H, dn.to(ty), mask=m)
    tl.store(ph, dr.to(ty), mask=m)
    tl.store(ph + H, dz.to(ty), mask=m)
    tl.store(ph + 2 * H, (dn * r).to(ty), mask=m)
    tl.store(dhdo + rb * s_dhdo + rh, dh * z, mask=m)


# --------------------------------------------------------------------------------------------------
# Launchers, with the signatures of pydl.ops.rnn.RefPointwise (so the shared driver can call either)
# --------------------------------------------------------------------------------------------------

def _rows(t):
    """Kernels need unit column stride; any row stride (including 0, a broadcast grad) is fine."""
    return t if t.stride(-1) == 1 else t.contiguous()


class TritonPointwise:
    block_b = None  # tests override these to check two tilings
    block_h = None

    @classmethod
    def _grid(cls, B, H, dev):
        """The grid and tile keywords. The interpreter runs 4x32 tiles (each program is Python); a GPU runs
        up to 16x128 -- which the compile test is told about (gpu_twin), since that tile is what a GPU
        compiles. A tile a test forces is used as is."""
        bb_gpu, bh_gpu = min(16, triton.next_power_of_2(B)), min(128, triton.next_power_of_2(H))
        interp = dev.type == "cpu"
        bb = cls.block_b or (4 if interp else bb_gpu)
        bh = cls.block_h or (32 if interp else bh_gpu)
        twin = {} if cls.block_b or cls.block_h else gpu_twin(dev, BLOCK_B=bb_gpu, BLOCK_H=bh_gpu)
        return (triton.cdiv(B, bb), triton.cdiv(H, bh)), dict(BLOCK_B=bb, BLOCK_H=bh, **twin)

    @staticmethod
    def _acc(t):
        return tl.float64 if t.dtype == torch.float64 else tl.float32

    @classmethod
    def lstm_fwd(cls, pre, c_prev, gates, c, h):
        B, H = h.shape
        pre, c_prev = _rows(pre), _rows(c_prev)
        grid, blk = cls._grid(B, H, h.device)
        _lstm_fwd_kernel[grid](pre, pre.stride(0), c_prev, c_prev.stride(0), gates, gates.stride(0), c, c.stride(0),
                               h, h.stride(0), B, H, ACC=cls._acc(c), **blk)

    @classmethod
    def lstm_bwd(cls, dh_out, dh_rec, dc, gates, c, c_prev, dG, dc_prev):
        B, H = c.shape
        dh_out, dh_rec, c_prev = _rows(dh_out), _rows(dh_rec), _rows(c_prev)
        grid, blk = cls._grid(B, H, c.device)
        _lstm_bwd_kernel[grid](dh_out, dh_out.stride(0), dh_rec, dh_rec.stride(0), dc, dc.stride(0), gates,
                               gates.stride(0), c, c.stride(0), c_prev, c_prev.stride(0), dG, dG.stride(0), dc_prev,
                               dc_prev.stride(0), B, H, ACC=cls._acc(c), **blk)

    @classmethod
    def gru_fwd(cls, xg, hg, h_prev, ws, h):
        B, H = h.shape
        xg, hg, h_prev = _rows(xg), _rows(hg), _rows(h_prev)
        grid, blk = cls._grid(B, H, h.device)
        _gru_fwd_kernel[grid](xg, xg.stride(0), hg, hg.stride(0), h_prev, h_prev.stride(0), ws, ws.stride(0), h,
                              h.stride(0), B, H, ACC=cls._acc(ws), **blk)

    @classmethod
    def gru_bwd(cls, dh_out, dh_rec, dh_dir, ws, h_prev, dGi, dGh, dh_dir_out):
        B, H = h_prev.shape
        dh_out, dh_rec, h_prev = _rows(dh_out), _rows(dh_rec), _rows(h_prev)
        grid, blk = cls._grid(B, H, ws.device)
        _gru_bwd_kernel[grid](dh_out, dh_out.stride(0), dh_rec, dh_rec.stride(0), dh_dir, dh_dir.stride(0), ws,
                              ws.stride(0), h_prev, h_prev.stride(0), dGi, dGi.stride(0), dGh, dGh.stride(0),
                              dh_dir_out, dh_dir_out.stride(0), B, H, ACC=cls._acc(ws), **blk)


# --------------------------------------------------------------------------------------------------
# The Triton backend of each op: the shared drivers with these kernels
# --------------------------------------------------------------------------------------------------

def lstm_cell_triton(x, hx, cx, w_ih, w_hh, b_ih, b_hh):
    return R.lstm_cell_driver(TritonPointwise, x, hx, cx, w_ih, w_hh, b_ih, b_hh)


def lstm_cell_backward_triton(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx, need_dh):
    return R.lstm_cell_backward_driver(TritonPointwise, grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx,
                                       need_dh)


def gru_cell_triton(x, hx, w_ih, w_hh, b_ih, b_hh):
    return R.gru_cell_driver(TritonPointwise, x, hx, w_ih, w_hh, b_ih, b_hh)


def gru_cell_backward_triton(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh):
    return R.gru_cell_backward_driver(TritonPointwise, grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh)


def lstm_triton(x, h0, c0, weights, mask, num_layers, bidirectional, has_bias, need_reserve=True):
    return R.seq_forward_driver(TritonPointwise, "lstm", x, h0, c0, weights, mask, num_layers, bidirectional,
                                has_bias, need_reserve)


def lstm_backward_triton(grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve, layer_outs,
                         num_layers, bidirectional, has_bias, need_dx):
    return R.seq_backward_driver(TritonPointwise, "lstm", grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out,
                                 reserve, layer_outs, num_layers, bidirectional, has_bias, need_dx)


def gru_triton(x, h0, weights, mask, num_layers, bidirectional, has_bias, need_reserve=True):
    out, hn, _, reserve, layer_outs = R.seq_forward_driver(TritonPointwise, "gru", x, h0, None, weights, mask,
                                                           num_layers, bidirectional, has_bias, need_reserve)
    return out, hn, reserve, layer_outs


def gru_backward_triton(grad_out, grad_hn, x, h0, weights, mask, out, reserve, layer_outs, num_layers,
                        bidirectional, has_bias, need_dx):
    gx, gh0, _, gw = R.seq_backward_driver(TritonPointwise, "gru", grad_out, grad_hn, None, x, h0, None, weights,
                                           mask, out, reserve, layer_outs, num_layers, bidirectional, has_bias,
                                           need_dx)
    return gx, gh0, gw
