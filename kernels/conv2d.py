"""conv2d in Triton: three implicit-GEMM kernels (forward, grad input, grad weight + grad bias).

(Why one long file: the three kernels share the implicit-GEMM addressing helpers and the launch logic;
split apart, each would need the others' helpers back. The depthwise kernels at the end share them too.)

"Implicit GEMM" (see pydl/ops/conv2d.py for the math): a convolution is a matrix product whose left operand,
the im2col matrix A[m, k] (output pixel m, tap k), is never built. Each program computes a BLOCK_M x BLOCK_N
tile of the product and, for every BLOCK_K slice of the reduction, *computes the addresses* of the A tile
from (m, k) -- which image, output row/column, input channel, kernel row/column -- loads it with a mask
(padding taps and ragged edges read 0) and feeds it to ``tl.dot`` (tensor cores on a GPU). One read of the
input per tap, no im2col buffer in memory.

* ``_fwd_kernel``: y = act(x * w + b). M = N*Ho*Wo pixels, N = Cout/g channels, K = Cg*kh*kw taps; grid axis
  2 is the group. The epilogue adds the bias, stores z (if the backward needs it) and the activated y --
  fused: the accumulator never goes to memory un-activated.
* ``_dgrad_kernel``: grad_x, as a *gather*: M = N*H*W input pixels, N = Cg input channels, K = Cout/g*kh*kw.
  Input pixel h receives from output row ho = (h + ph - i*dh) / sh when that division is exact and in range;
  all other (pixel, tap) pairs are masked to 0. Every program owns its output tile: no atomics, deterministic.
  (For stride 2, 3/4 of the taps are masked -- wasted lanes, the price of the simple gather.)
* ``_wgrad_kernel``: grad_w[o, k] = sum over pixels of dz[m, o] * A[m, k]: M = Cout/g, N = K, and the *long*
  reduction is over N*Ho*Wo pixels -- split over SPLIT programs (axis 2) that write partial sums to a
  workspace, added in a fixed order afterwards (deterministic, unlike atomics). grad_b rides along: the
  programs of the first N-tile also sum their dz tile over the pixels.

The activation's backward dz = act'(z) * dy is applied as dy is loaded, in both backward kernels (z is the
pre-activation, or y standing in for it under relu), so dz is never stored.

The reduction is ordered (tap, channel): an outer loop over the kh*kw taps, an inner one over blocks of
channels. Within one tap each row of the A tile reads ONE input pixel, so the addresses are a per-row vector
(image, row, column, padding test) plus a per-column vector (channel) -- no per-element division of a flat
tap index, which would cost as much integer work as the tile's multiply-adds. grad_w's grid has one axis over
(tap, channel block) for the same reason.

Layouts: every tensor is addressed through its strides, so NCHW, channels_last and even sliced inputs are read
in place (channels_last makes the channel loads contiguous).

Precision: fp32 inputs use ``input_precision="ieee"`` (exact fp32 FMA, not TF32) unless the launcher is given
``allow_tf32=True`` (the op passes ``pydl.ops.conv2d.ALLOW_TF32``, read per call, as it does to the CUDA glue);
fp16/bf16 feed tensor cores with fp32 accumulation; fp64 uses a broadcast-multiply-sum instead of tl.dot
(portable). In the interpreter (CPU tensors) fp16/bf16 tiles are
upcast to fp32 before any arithmetic (it cannot do bf16 math).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _env
from .._layout import out_memory_format
from ._activation import ACT_CODES, act_backward, act_forward
from ._jit import autotune, device_constants, gpu_twin, jit


@jit
def _mma(acc, a, b, PRECISION: tl.constexpr, MODE: tl.constexpr):
    """acc += a @ b. MODE 0: tl.dot on the loaded dtype (tensor cores); 1: upcast to fp32 first (interpreter);
    2: fp64 by broadcast-multiply-sum."""
    if MODE == 2:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif MODE == 1:
        acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    else:
        acc += tl.dot(a, b, input_precision=PRECISION)
    return acc


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------

@jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, p_ptr,
                M, H, W, Ho, Wo, Cg, Cog, K,
                sh, sw, ph, pw, dh, dw,
                sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
                SAVE_Z: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    # int64 from the start: n * sxn passes 2**31 for big activations
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    n_img = offs_m // (Ho * Wo)
    r = offs_m % (Ho * Wo)
    ho = r // Wo
    wo = r % Wo
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < Cog
    co = g * Cog + offs_n
    x_base = x_ptr + n_img * sxn + (g * Cg).to(tl.int64) * sxc  # (BLOCK_M,) pointers: image n, channel 0 of g
    w_base = w_ptr + co.to(tl.int64) * K                         # (BLOCK_N,) pointers: filter co

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    # The reduction runs over taps (outer) and channel blocks (inner). Within one tap, every row of the A tile
    # reads from ONE input pixel (per output pixel: one hi, one wi, one padding test), and the columns are
    # just channels: the address math is a (BLOCK_M,) vector plus a (BLOCK_K,) vector, not a per-element
    # division of a flat tap index.
    for t in range(0, KH * KW):
        i = t // KW
        j = t % KW
        hi = ho * sh - ph + i * dh
        wi = wo * sw - pw + j * dw
        row_ok = m_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        a_row = x_base + hi * sxh + wi * sxw
        for c0 in range(0, Cg, BLOCK_K):
            ci = c0 + tl.arange(0, BLOCK_K)
            c_ok = ci < Cg
            a = tl.load(a_row[:, None] + ci[None, :] * sxc, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            # w is (Cout, Cg, KH, KW) contiguous: element (co, ci, i, j) at co*K + ci*KH*KW + t
            b = tl.load(w_base[None, :] + (ci * (KH * KW) + t)[:, None], mask=c_ok[:, None] & n_mask[None, :],
                        other=0.0)
            acc = _mma(acc, a, b, PRECISION, MODE)

    # epilogue: bias, (z), activation, store -- in registers, one write per output
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=n_mask, other=0.0).to(ACC)[None, :]
    y_off = (n_img * syn + ho * syh + wo * syw)[:, None] + co[None, :].to(tl.int64) * syc
    o_mask = m_mask[:, None] & n_mask[None, :]
    if SAVE_Z:
        tl.store(z_ptr + y_off, acc.to(z_ptr.dtype.element_ty), mask=o_mask)
    leak = tl.load(p_ptr + 0)
    sub = tl.load(p_ptr + 1)
    maxv = tl.load(p_ptr + 2)
    y = act_forward(acc, leak, sub, maxv, ACT)
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=o_mask)


def _fwd_configs():
    # few configs on purpose: every distinct (shape key, config) is one compile, and a test run or benchmark
    # meets dozens of shapes
    cfgs = []
    for bm, bn, bk, warps, stages in [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 64, 32, 4, 4),
                                      (64, 32, 16, 2, 4)]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return cfgs


_INTERP_CFG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
_fwd_tuned = autotune(_fwd_configs(), key=["M", "Cg", "Cog", "KH", "KW", "MODE"], interpreter_config=_INTERP_CFG)(
    _fwd_kernel)


# --------------------------------------------------------------------------------------------------
# grad input (gather)
# --------------------------------------------------------------------------------------------------

@jit
def _dgrad_kernel(dy_ptr, zs_ptr, w_ptr, dx_ptr, p_ptr,
                  M, H, W, Ho, Wo, Cg, Cog,
                  sh, sw, ph, pw, dh, dw,
                  syn, syc, syh, syw, sxn, sxc, sxh, sxw,
                  KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                  PRECISION: tl.constexpr, MODE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels (n, h, w)
    m_mask = offs_m < M
    n_img = offs_m // (H * W)
    r = offs_m % (H * W)
    h = r // W
    w = r % W
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels of the group
    n_mask = offs_n < Cg
    leak = tl.load(p_ptr + 0)
    sub = tl.load(p_ptr + 1)
    maxv = tl.load(p_ptr + 2)
    dy_img = n_img * syn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for t in range(0, KH * KW):  # taps outer: one (ho, wo) per input pixel and tap
        i = t // KW
        j = t % KW
        th = h + ph - i * dh  # = ho * sh when input row h is tap i of output row ho
        tw = w + pw - j * dw
        ho = th // sh
        wo = tw // sw
        # test th >= 0 first: for negative th, // and % differ between C (GPU) and Python (interpreter)
        row_ok = m_mask & (th >= 0) & (tw >= 0) & (ho * sh == th) & (wo * sw == tw) & (ho < Ho) & (wo < Wo)
        dy_row = dy_img + ho * syh + wo * syw
        for o0 in range(0, Cog, BLOCK_K):
            o = o0 + tl.arange(0, BLOCK_K)
            o_ok = o < Cog
            co = (g * Cog + o).to(tl.int64)
            off = dy_row[:, None] + co[None, :] * syc
            am = row_ok[:, None] & o_ok[None, :]
            a = tl.load(dy_ptr + off, mask=am, other=0.0)
            if ACT != 0:  # dz = act'(z) * dy, on the fly
                zv = tl.load(zs_ptr + off, mask=am, other=0.0)
                a = act_backward(a.to(ACC), zv.to(ACC), leak, sub, maxv, ACT).to(dy_ptr.dtype.element_ty)
            # w[co, ci, i, j] at co*Cg*KH*KW + ci*KH*KW + t
            b = tl.load(w_ptr + (co * Cg * (KH * KW) + t)[:, None] + (offs_n * (KH * KW))[None, :],
                        mask=o_ok[:, None] & n_mask[None, :], other=0.0)
            acc = _mma(acc, a, b, PRECISION, MODE)

    ci = (g * Cg + offs_n).to(tl.int64)
    x_off = (n_img * sxn + h * sxh + w * sxw)[:, None] + ci[None, :] * sxc
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_dgrad_tuned = autotune(_fwd_configs(), key=["M", "Cg", "Cog", "KH", "KW", "MODE"],
                        interpreter_config=_INTERP_CFG)(_dgrad_kernel)


# --------------------------------------------------------------------------------------------------
# grad weight (+ grad bias), split over the pixels
# --------------------------------------------------------------------------------------------------

@jit
def _wgrad_kernel(dy_ptr, zs_ptr, x_ptr, ws_ptr, wsb_ptr, p_ptr,
                  P, H, W, Ho, Wo, Cg, Cog, Co, K, per_split,
                  sh, sw, ph, pw, dh, dw,
                  syn, syc, syh, syw, sxn, sxc, sxh, sxw,
                  KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr,
                  WANT_B: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, MODE: tl.constexpr,
                  SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)  # output channels of the group
    pid_n = tl.program_id(1)  # (tap, block of input channels)
    pid_z = tl.program_id(2)  # group * SPLIT + split
    g = pid_z // SPLIT
    split = pid_z % SPLIT
    n_cblocks = tl.cdiv(Cg, BLOCK_N)
    t = pid_n // n_cblocks
    cb = pid_n % n_cblocks
    i = t // KW
    j = t % KW
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < Cog
    co = (g * Cog + offs_m).to(tl.int64)
    offs_c = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = offs_c < Cg
    x_c = (g * Cg + offs_c).to(tl.int64) * sxc
    leak = tl.load(p_ptr + 0)
    sub = tl.load(p_ptr + 1)
    maxv = tl.load(p_ptr + 2)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    bacc = tl.zeros((BLOCK_M,), dtype=ACC)
    p_begin = split.to(tl.int64) * per_split
    p_end = tl.minimum(p_begin + per_split, P)
    for p0 in range(p_begin, p_end, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)  # output pixels (n, ho, wo): the reduction
        p_mask = offs_p < p_end
        n_img = offs_p // (Ho * Wo)
        rp = offs_p % (Ho * Wo)
        ho = rp // Wo
        wo = rp % Wo
        # A = dz^T tile (BLOCK_M channels x BLOCK_K pixels)
        y_off = co[:, None] * syc + (n_img * syn + ho * syh + wo * syw)[None, :]
        am = m_mask[:, None] & p_mask[None, :]
        a = tl.load(dy_ptr + y_off, mask=am, other=0.0)
        if ACT != 0:
            zv = tl.load(zs_ptr + y_off, mask=am, other=0.0)
            a = act_backward(a.to(ACC), zv.to(ACC), leak, sub, maxv, ACT).to(dy_ptr.dtype.element_ty)
        if WANT_B:
            bacc += tl.sum(a.to(ACC), axis=1)
        # B = the im2col tile for tap (i, j): one input pixel per row (output pixel), channels across
        hi = ho * sh - ph + i * dh
        wi = wo * sw - pw + j * dw
        p_ok = p_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        b = tl.load(x_ptr + (n_img * sxn + hi * sxh + wi * sxw)[:, None] + x_c[None, :],
                    mask=p_ok[:, None] & c_ok[None, :], other=0.0)
        acc = _mma(acc, a, b, PRECISION, MODE)

    # partial sums: ws[split, co, ci*KH*KW + t] = the weight's own layout
    ws_off = (split * Co + co)[:, None] * K + (offs_c * (KH * KW) + t)[None, :]
    tl.store(ws_ptr + ws_off, acc, mask=m_mask[:, None] & c_ok[None, :])
    if WANT_B:
        if pid_n == 0:
            tl.store(wsb_ptr + split * Co + co, bacc, mask=m_mask)


_wgrad_tuned = autotune(
    [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=wp, num_stages=st)
     for bm, bn, bk, wp, st in [(64, 64, 32, 4, 4), (128, 64, 32, 8, 3), (32, 64, 64, 4, 4), (64, 16, 64, 2, 4)]],
    key=["P", "Cg", "Cog", "KH", "KW", "MODE", "SPLIT"], interpreter_config=_INTERP_CFG)(_wgrad_kernel)


# --------------------------------------------------------------------------------------------------
# depthwise (one input and one output channel per group): direct kernels
# --------------------------------------------------------------------------------------------------
# As a GEMM a depthwise conv has N = 1 output channel per group: a tensor-core tile would be 1/16 useful.
# Directly: a (pixels x channels) tile, and for each tap one load of x and one multiply-add per element. It is
# memory-bound, so plain fp32 (fp64) FMAs are the right tool; no tl.dot.

@jit
def _dw_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, p_ptr,
                   P, C, H, W, Ho, Wo, sh, sw, ph, pw, dh, dw,
                   sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                   KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_Z: tl.constexpr,
                   ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    n = offs_p // (Ho * Wo)
    r = offs_p % (Ho * Wo)
    ho = r // Wo
    wo = r % Wo
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for t in range(0, KH * KW):
        i = t // KW
        j = t % KW
        hi = ho * sh - ph + i * dh
        wi = wo * sw - pw + j * dw
        ok = p_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        xv = tl.load(x_ptr + (n * sxn + hi * sxh + wi * sxw)[:, None] + c[None, :].to(tl.int64) * sxc,
                     mask=ok[:, None] & c_mask[None, :], other=0.0).to(ACC)
        wv = tl.load(w_ptr + c * (KH * KW) + t, mask=c_mask, other=0.0).to(ACC)
        acc += xv * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_mask, other=0.0).to(ACC)[None, :]
    y_off = (n * syn + ho * syh + wo * syw)[:, None] + c[None, :].to(tl.int64) * syc
    o_mask = p_mask[:, None] & c_mask[None, :]
    if SAVE_Z:
        tl.store(z_ptr + y_off, acc.to(z_ptr.dtype.element_ty), mask=o_mask)
    y = act_forward(acc, tl.load(p_ptr + 0), tl.load(p_ptr + 1), tl.load(p_ptr + 2), ACT)
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=o_mask)


@jit
def _dw_dgrad_kernel(dy_ptr, zs_ptr, w_ptr, dx_ptr, p_ptr,
                     P, C, H, W, Ho, Wo, sh, sw, ph, pw, dh, dw,
                     syn, syc, syh, syw, sxn, sxc, sxh, sxw,
                     KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # input pixels
    p_mask = offs_p < P
    n = offs_p // (H * W)
    r = offs_p % (H * W)
    h = r // W
    w = r % W
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    leak = tl.load(p_ptr + 0)
    sub = tl.load(p_ptr + 1)
    maxv = tl.load(p_ptr + 2)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for t in range(0, KH * KW):
        i = t // KW
        j = t % KW
        th = h + ph - i * dh
        tw = w + pw - j * dw
        ho = th // sh
        wo = tw // sw
        ok = p_mask & (th >= 0) & (tw >= 0) & (ho * sh == th) & (wo * sw == tw) & (ho < Ho) & (wo < Wo)
        off = (n * syn + ho * syh + wo * syw)[:, None] + c[None, :].to(tl.int64) * syc
        m = ok[:, None] & c_mask[None, :]
        d = tl.load(dy_ptr + off, mask=m, other=0.0).to(ACC)
        if ACT != 0:
            d = act_backward(d, tl.load(zs_ptr + off, mask=m, other=0.0).to(ACC), leak, sub, maxv, ACT)
        wv = tl.load(w_ptr + c * (KH * KW) + t, mask=c_mask, other=0.0).to(ACC)
        acc += d * wv[None, :]
    x_off = (n * sxn + h * sxh + w * sxw)[:, None] + c[None, :].to(tl.int64) * sxc
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


@jit
def _dw_wgrad_kernel(dy_ptr, zs_ptr, x_ptr, ws_ptr, wsb_ptr, p_ptr,
                     P, C, H, W, Ho, Wo, per_split, sh, sw, ph, pw, dh, dw,
                     syn, syc, syh, syw, sxn, sxc, sxh, sxw,
                     KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr, WANT_B: tl.constexpr,
                     ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    t = tl.program_id(1)  # tap
    split = tl.program_id(2)
    i = t // KW
    j = t % KW
    leak = tl.load(p_ptr + 0)
    sub = tl.load(p_ptr + 1)
    maxv = tl.load(p_ptr + 2)
    acc = tl.zeros((BLOCK_C,), dtype=ACC)
    bacc = tl.zeros((BLOCK_C,), dtype=ACC)
    p_begin = split.to(tl.int64) * per_split
    p_end = tl.minimum(p_begin + per_split, P)
    for p0 in range(p_begin, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < p_end
        n = offs_p // (Ho * Wo)
        r = offs_p % (Ho * Wo)
        ho = r // Wo
        wo = r % Wo
        off = (n * syn + ho * syh + wo * syw)[:, None] + c[None, :].to(tl.int64) * syc
        m = p_mask[:, None] & c_mask[None, :]
        d = tl.load(dy_ptr + off, mask=m, other=0.0).to(ACC)
        if ACT != 0:
            d = act_backward(d, tl.load(zs_ptr + off, mask=m, other=0.0).to(ACC), leak, sub, maxv, ACT)
        if WANT_B:
            bacc += tl.sum(d, axis=0)
        hi = ho * sh - ph + i * dh
        wi = wo * sw - pw + j * dw
        ok = p_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        xv = tl.load(x_ptr + (n * sxn + hi * sxh + wi * sxw)[:, None] + c[None, :].to(tl.int64) * sxc,
                     mask=ok[:, None] & c_mask[None, :], other=0.0).to(ACC)
        acc += tl.sum(d * xv, axis=0)
    tl.store(ws_ptr + (split * C + c) * (KH * KW) + t, acc, mask=c_mask)
    if WANT_B:
        if t == 0:
            tl.store(wsb_ptr + split * C + c, bacc, mask=c_mask)


_DW_GPU_BLOCK = (64, 32)  # (BLOCK_P, BLOCK_C) of the depthwise kernels on a GPU; the interpreter takes (16, 16)


def _dw_blocks(block, device):
    if block is not None:
        return block[0], block[1]
    return (16, 16) if device.type == "cpu" else _DW_GPU_BLOCK


def _dw_gpu_twin(block, device):
    # the tile a GPU launch would take, for the compile test's record of an interpreted launch (kernels/_jit.py)
    return {} if block is not None else gpu_twin(device, BLOCK_P=_DW_GPU_BLOCK[0], BLOCK_C=_DW_GPU_BLOCK[1])


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------

def _mode_and_precision(dtype, device, allow_tf32):
    interp = device.type == "cpu"
    if dtype == torch.float64:
        return 2, "ieee", tl.float64
    if interp:
        return 1, "ieee", tl.float32
    if dtype == torch.float32:
        return 0, ("tf32" if allow_tf32 else "ieee"), tl.float32
    return 0, "ieee", tl.float32  # fp16/bf16: tensor cores, fp32 accumulation


def _params(leak, sub, maxv, dtype, device):
    # in the accumulator dtype: a Python float argument would arrive as fp32 (0.1 rounded) in an fp64 kernel;
    # cached per device, not built per call (that would be a host sync, and illegal in CUDA-graph capture)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return device_constants((float(leak), float(sub), float(maxv)), acc, device)


def _gpu_mode(dtype, device):
    # the interpreter upcasts tiles before tl.dot (MODE 1); a GPU feeds them to tl.dot as they are (MODE 0): the
    # compile test must compile the GPU's path (kernels/_jit.py)
    return {} if dtype == torch.float64 else gpu_twin(device, MODE=0)


# PYDL_TRITON_AUTOTUNE=0 (or AUTOTUNE = False) skips autotuning on the GPU and uses DEFAULT_BLOCK: the GPU
# correctness tests meet many shapes, and each would otherwise compile every config.
AUTOTUNE = _env.flag("PYDL_TRITON_AUTOTUNE", default=True, strict=False)  # "false"/"off" work too
DEFAULT_BLOCK = (64, 64, 32)

# fp64 has no tensor-core path here (broadcast-multiply-sum): its (BM, BK, BN) product lives in registers, so
# it gets one small fixed tile instead of the autotuned ones (which would not fit).
_FP64_BLOCK = (32, 32, 8)


def _blocks(block, dtype=None, device=None):
    if block is None and dtype == torch.float64:  # the interpreter too: it then runs (and records) the GPU's tile
        block = _FP64_BLOCK
    if block is None and not AUTOTUNE and device is not None and device.type == "cuda":
        block = DEFAULT_BLOCK
    if block is None:
        return None
    bm, bn, bk = block
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}


def conv2d_triton(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, block=None,
                  allow_tf32=False):
    """Triton backend of pydl.conv2d. ``block=(BLOCK_M, BLOCK_N, BLOCK_K)`` skips autotuning (tests);
    ``allow_tf32``: fp32 tiles may use TF32 tensor cores on a GPU."""
    N, C, H, W = x.shape
    Co, Cg, KH, KW = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    Ho = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    fmt = out_memory_format(x)
    y = torch.empty((N, Co, Ho, Wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    keep = act == "general_relu" and save_preact
    z = torch.empty_like(y) if keep else x.new_empty((0,))
    if y.numel() == 0:
        return y, z
    w = w.contiguous()
    mode, prec, acc = _mode_and_precision(x.dtype, x.device, allow_tf32)
    Cog, K, M = Co // groups, Cg * KH * KW, N * Ho * Wo
    params = _params(leak, sub, maxv, x.dtype, x.device)
    if Cg == 1 and Cog == 1:  # depthwise: the direct kernel
        bp, bc = _dw_blocks(block, x.device)
        _dw_fwd_kernel[(triton.cdiv(M, bp), triton.cdiv(Co, bc))](
            x, w, b if b is not None else w, y, z if keep else y, params, M, Co, H, W, Ho, Wo, sh, sw, ph, pw, dh, dw,
            *x.stride(), *y.stride(), KH=KH, KW=KW, HAS_BIAS=b is not None, SAVE_Z=keep, ACT=ACT_CODES[act],
            ACC=acc, BLOCK_P=bp, BLOCK_C=bc, **_dw_gpu_twin(block, x.device))
        return y, z
    args = (x, w, b if b is not None else w, y, z if keep else y, params, M, H, W, Ho, Wo, Cg, Cog, K,
            sh, sw, ph, pw, dh, dw, *x.stride(), *y.stride())
    meta = dict(KH=KH, KW=KW, HAS_BIAS=b is not None, SAVE_Z=keep, ACT=ACT_CODES[act], ACC=acc, PRECISION=prec,
                MODE=mode, **_gpu_mode(x.dtype, x.device))
    blk = _blocks(block, x.dtype, x.device)
    if blk is not None:
        grid = (triton.cdiv(M, blk["BLOCK_M"]), triton.cdiv(Cog, blk["BLOCK_N"]), groups)
        _fwd_kernel[grid](*args, **meta, **blk)
    else:
        grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(Cog, m["BLOCK_N"]), groups)  # noqa: E731
        _fwd_tuned[grid](*args, **meta)
    return y, z


def conv2d_backward_triton(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask,
                           block=None, split=None, allow_tf32=False):
    """Triton backend of pydl.conv2d_backward. ``block`` and ``allow_tf32`` as in :func:`conv2d_triton`;
    ``split`` fixes the number of pixel ranges grad_w is split over (tests)."""
    N, C, H, W = x.shape
    Co, Cg, KH, KW = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    Ho, Wo = grad_y.shape[2], grad_y.shape[3]
    Cog, K = Co // groups, Cg * KH * KW
    w = w.contiguous()
    dy = grad_y
    zs = z if (act != "none" and z is not None) else dy
    if zs.stride() != dy.stride():  # the kernels address z with dy's strides
        zs = torch.empty_like(dy).copy_(zs)
    mode, prec, acc = _mode_and_precision(x.dtype, x.device, allow_tf32)
    params = _params(leak, sub, maxv, x.dtype, x.device)
    blk = _blocks(block, x.dtype, x.device)
    empty = x.new_empty((0,))
    gx, gw, gb = empty, empty, empty
    code = ACT_CODES[act]

    if Cg == 1 and Cog == 1:  # depthwise: the direct kernels
        return _dw_backward(dy, zs, x, w, params, stride, padding, dilation, code, acc, output_mask, block, split)

    if output_mask[0]:
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x))
        M = N * H * W
        if M:
            args = (dy, zs, w, gx, params, M, H, W, Ho, Wo, Cg, Cog, sh, sw, ph, pw, dh, dw,
                    *dy.stride(), *gx.stride())
            meta = dict(KH=KH, KW=KW, ACT=code, ACC=acc, PRECISION=prec, MODE=mode, **_gpu_mode(x.dtype, x.device))
            if blk is not None:
                _dgrad_kernel[(triton.cdiv(M, blk["BLOCK_M"]), triton.cdiv(Cg, blk["BLOCK_N"]), groups)](
                    *args, **meta, **blk)
            else:
                grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(Cg, m["BLOCK_N"]), groups)  # noqa: E731
                _dgrad_tuned[grid](*args, **meta)

    if output_mask[1] or output_mask[2]:
        P = N * Ho * Wo
        acc_t = torch.float64 if x.dtype == torch.float64 else torch.float32
        if split is None:
            if x.device.type == "cpu":
                split = 1
            else:
                # enough programs to fill the GPU: the (Cog x K) tile grid alone is often only a few dozen
                tiles = triton.cdiv(Cog, 64) * triton.cdiv(K, 64) * groups
                sms = torch.cuda.get_device_properties(x.device).multi_processor_count
                split = max(1, min(triton.cdiv(4 * sms, tiles), triton.cdiv(P, 256), 64))
        per_split = triton.cdiv(P, split) if P else 1
        ws = torch.empty((split, Co, K), dtype=acc_t, device=x.device)
        wsb = torch.empty((split, Co), dtype=acc_t, device=x.device)
        if P:
            meta = dict(KH=KH, KW=KW, ACT=code, WANT_B=bool(output_mask[2]), ACC=acc, PRECISION=prec, MODE=mode,
                        SPLIT=split, **_gpu_mode(x.dtype, x.device))

            args = (dy, zs, x, ws, wsb, params, P, H, W, Ho, Wo, Cg, Cog, Co, K, per_split,
                    sh, sw, ph, pw, dh, dw, *dy.stride(), *x.stride())
            # axis 1: every tap times the blocks of input channels
            grid = lambda m: (triton.cdiv(Cog, m["BLOCK_M"]), KH * KW * triton.cdiv(Cg, m["BLOCK_N"]),  # noqa: E731
                              groups * split)
            if blk is not None:
                _wgrad_kernel[grid(blk)](*args, **meta, **blk)
            else:
                _wgrad_tuned[grid](*args, **meta)
        else:
            ws.zero_()
            wsb.zero_()
        # the split partials, added in a fixed order (a tiny reduction: split x the weight's size)
        if output_mask[1]:
            gw = ws.sum(0).view(w.shape).to(x.dtype)
        if output_mask[2]:
            gb = wsb.sum(0).to(x.dtype)
    return gx, gw, gb


def _dw_backward(dy, zs, x, w, params, stride, padding, dilation, code, acc, output_mask, block, split):
    N, C, H, W = x.shape
    KH, KW = w.shape[2], w.shape[3]
    Ho, Wo = dy.shape[2], dy.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    bp, bc = _dw_blocks(block, x.device)
    empty = x.new_empty((0,))
    gx, gw, gb = empty, empty, empty
    if output_mask[0]:
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x))
        if gx.numel():
            _dw_dgrad_kernel[(triton.cdiv(N * H * W, bp), triton.cdiv(C, bc))](
                dy, zs, w, gx, params, N * H * W, C, H, W, Ho, Wo, sh, sw, ph, pw, dh, dw, *dy.stride(),
                *gx.stride(), KH=KH, KW=KW, ACT=code, ACC=acc, BLOCK_P=bp, BLOCK_C=bc, **_dw_gpu_twin(block, x.device))
    if output_mask[1] or output_mask[2]:
        P = N * Ho * Wo
        acc_t = torch.float64 if x.dtype == torch.float64 else torch.float32
        if split is None:  # a long reduction per (channel block, tap): split it so the GPU has programs enough
            split = 1 if x.device.type == "cpu" else max(1, min(64, triton.cdiv(P, 4096)))
        per_split = triton.cdiv(P, split) if P else 1
        ws = torch.zeros((split, C, KH * KW), dtype=acc_t, device=x.device)
        wsb = torch.zeros((split, C), dtype=acc_t, device=x.device)
        if P:
            _dw_wgrad_kernel[(triton.cdiv(C, bc), KH * KW, split)](
                dy, zs, x, ws, wsb, params, P, C, H, W, Ho, Wo, per_split, sh, sw, ph, pw, dh, dw, *dy.stride(),
                *x.stride(), KH=KH, KW=KW, ACT=code, WANT_B=bool(output_mask[2]), ACC=acc, BLOCK_P=bp,
                BLOCK_C=bc, **_dw_gpu_twin(block, x.device))
        if output_mask[1]:
            gw = ws.sum(0).view(w.shape).to(x.dtype)
        if output_mask[2]:
            gb = wsb.sum(0).to(x.dtype)
    return gx, gw, gb
