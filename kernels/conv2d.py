"""conv2d in Triton: three implicit-GEMM kernels (forward, grad input, grad weight + grad bias).

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

Layouts: every tensor is addressed through its strides, so NCHW, channels_last and even sliced inputs are read
in place. The reduction order follows the layout: for channels_last input the taps are ordered (i, j, c) so a
K-slice is a contiguous run of channels (coalesced loads); for NCHW it is (c, i, j).

Precision: fp32 inputs use ``input_precision="ieee"`` (exact fp32 FMA, not TF32) unless
``pydl.ops.conv2d.ALLOW_TF32`` is set; fp16/bf16 feed tensor cores with fp32 accumulation; fp64 uses a
broadcast-multiply-sum instead of tl.dot (portable). In the interpreter (CPU tensors) fp16/bf16 tiles are
upcast to fp32 before any arithmetic (it cannot do bf16 math).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._activation import ACT_CODES, act_backward, act_forward
from ._jit import autotune, jit


@jit
def _decompose_k(offs_k, Cg, KH: tl.constexpr, KW: tl.constexpr, CI_INNER: tl.constexpr):
    """tap index -> (input channel, kernel row, kernel column) in the layout's order."""
    if CI_INNER:  # (i, j, c): consecutive k = consecutive channels (contiguous in channels_last)
        ci = offs_k % Cg
        r = offs_k // Cg
        ki = r // KW
        kj = r % KW
    else:  # (c, i, j): the weight's own order
        ci = offs_k // (KH * KW)
        r = offs_k % (KH * KW)
        ki = r // KW
        kj = r % KW
    return ci, ki, kj


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
                KH: tl.constexpr, KW: tl.constexpr, CI_INNER: tl.constexpr, HAS_BIAS: tl.constexpr,
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
    x_base = x_ptr + n_img * sxn + (g * Cg).to(tl.int64) * sxc
    hi0 = ho * sh - ph
    wi0 = wo * sw - pw

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        ci, ki, kj = _decompose_k(offs_k, Cg, KH, KW, CI_INNER)
        hi = hi0[:, None] + (ki * dh)[None, :]
        wi = wi0[:, None] + (kj * dw)[None, :]
        a_mask = m_mask[:, None] & k_mask[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        a = tl.load(x_base[:, None] + ci[None, :] * sxc + hi * sxh + wi * sxw, mask=a_mask, other=0.0)
        # w is (Cout, Cg, KH, KW) contiguous: element (co, ci, ki, kj) at co*K + (ci*KH + ki)*KW + kj
        w_off = co[None, :].to(tl.int64) * K + ((ci * KH + ki) * KW + kj)[:, None]
        b = tl.load(w_ptr + w_off, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
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
    cfgs = []
    for bm, bn, bk, warps, stages in [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                                      (64, 64, 32, 4, 4), (128, 32, 32, 4, 4), (64, 32, 64, 4, 3),
                                      (32, 32, 32, 2, 4), (64, 16, 32, 2, 4)]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return cfgs


_INTERP_CFG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
_fwd_tuned = autotune(_fwd_configs(), key=["M", "Cog", "K", "KH", "KW", "MODE"], interpreter_config=_INTERP_CFG)(
    _fwd_kernel)


# --------------------------------------------------------------------------------------------------
# grad input (gather)
# --------------------------------------------------------------------------------------------------

@jit
def _dgrad_kernel(dy_ptr, zs_ptr, w_ptr, dx_ptr, p_ptr,
                  M, H, W, Ho, Wo, Cg, Cog, K,
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
    dy_base = dy_ptr + n_img * syn
    zs_base = zs_ptr + n_img * syn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (o, i, j): the output channel slowest
        k_mask = offs_k < K
        o = offs_k // (KH * KW)
        rk = offs_k % (KH * KW)
        ki = rk // KW
        kj = rk % KW
        th = h[:, None] + ph - (ki * dh)[None, :]  # = ho * sh when pixel h is tap ki of output row ho
        tw = w[:, None] + pw - (kj * dw)[None, :]
        # test th >= 0 before using th % sh: for negative th, % and // differ between C and Python
        valid = (th >= 0) & (tw >= 0)
        ho = th // sh
        wo = tw // sw
        valid = valid & (ho * sh == th) & (wo * sw == tw) & (ho < Ho) & (wo < Wo)
        a_mask = m_mask[:, None] & k_mask[None, :] & valid
        co = (g * Cog + o).to(tl.int64)
        off = co[None, :] * syc + ho * syh + wo * syw
        a = tl.load(dy_base[:, None] + off, mask=a_mask, other=0.0)
        if ACT != 0:  # dz = act'(z) * dy, on the fly
            zv = tl.load(zs_base[:, None] + off, mask=a_mask, other=0.0)
            a = act_backward(a.to(ACC), zv.to(ACC), leak, sub, maxv, ACT).to(dy_ptr.dtype.element_ty)
        # w[(co), ci, ki, kj]
        w_off = (co * Cg * KH * KW + ki * KW + kj)[:, None] + (offs_n * KH * KW)[None, :]
        b = tl.load(w_ptr + w_off, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _mma(acc, a, b, PRECISION, MODE)

    ci = (g * Cg + offs_n).to(tl.int64)
    x_off = (n_img * sxn + h * sxh + w * sxw)[:, None] + ci[None, :] * sxc
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_dgrad_tuned = autotune(_fwd_configs(), key=["M", "Cg", "K", "KH", "KW", "MODE"],
                        interpreter_config=_INTERP_CFG)(_dgrad_kernel)


# --------------------------------------------------------------------------------------------------
# grad weight (+ grad bias), split over the pixels
# --------------------------------------------------------------------------------------------------

@jit
def _wgrad_kernel(dy_ptr, zs_ptr, x_ptr, ws_ptr, wsb_ptr, p_ptr,
                  P, H, W, Ho, Wo, Cg, Cog, Co, K, per_split,
                  sh, sw, ph, pw, dh, dw,
                  syn, syc, syh, syw, sxn, sxc, sxh, sxw,
                  KH: tl.constexpr, KW: tl.constexpr, CI_INNER: tl.constexpr, ACT: tl.constexpr,
                  WANT_B: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, MODE: tl.constexpr,
                  SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)  # output channels of the group
    pid_n = tl.program_id(1)  # taps (ci, ki, kj)
    pid_z = tl.program_id(2)  # group * SPLIT + split
    g = pid_z // SPLIT
    split = pid_z % SPLIT
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < Cog
    co = (g * Cog + offs_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < K
    ci, ki, kj = _decompose_k(offs_n, Cg, KH, KW, CI_INNER)
    leak = tl.load(p_ptr + 0)
    sub = tl.load(p_ptr + 1)
    maxv = tl.load(p_ptr + 2)
    x_c = (g * Cg + ci).to(tl.int64) * sxc

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
        # B = im2col tile (BLOCK_K pixels x BLOCK_N taps)
        hi = (ho * sh - ph)[:, None] + (ki * dh)[None, :]
        wi = (wo * sw - pw)[:, None] + (kj * dw)[None, :]
        bm = p_mask[:, None] & n_mask[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        b = tl.load(x_ptr + (n_img * sxn)[:, None] + x_c[None, :] + hi * sxh + wi * sxw, mask=bm, other=0.0)
        acc = _mma(acc, a, b, PRECISION, MODE)

    # partial sums: ws[split, co, k] in (ci, ki, kj) order = the weight's layout
    k_w = (ci * KH + ki) * KW + kj
    ws_off = (split * Co + co)[:, None] * K + k_w[None, :]
    tl.store(ws_ptr + ws_off, acc, mask=m_mask[:, None] & n_mask[None, :])
    if WANT_B:
        if pid_n == 0:
            tl.store(wsb_ptr + split * Co + co, bacc, mask=m_mask)


_wgrad_tuned = autotune(
    [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=wp, num_stages=st)
     for bm, bn, bk, wp, st in [(64, 64, 32, 4, 4), (64, 128, 32, 4, 4), (128, 64, 32, 8, 3), (32, 64, 64, 4, 4),
                                (64, 32, 64, 4, 3), (16, 64, 64, 2, 4)]],
    key=["P", "Cog", "K", "KH", "KW", "MODE", "SPLIT"], interpreter_config=_INTERP_CFG)(_wgrad_kernel)


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------

def _out_format(x):
    from ..ops.conv2d import out_memory_format

    return out_memory_format(x)


def _mode_and_precision(dtype, device):
    from ..ops import conv2d as _op

    interp = device.type == "cpu"
    if dtype == torch.float64:
        return 2, "ieee", tl.float64
    if interp:
        return 1, "ieee", tl.float32
    if dtype == torch.float32:
        return 0, ("tf32" if _op.ALLOW_TF32 else "ieee"), tl.float32
    return 0, "ieee", tl.float32  # fp16/bf16: tensor cores, fp32 accumulation


def _params(leak, sub, maxv, dtype, device):
    # in the accumulator dtype: a Python float argument would arrive as fp32 (0.1 rounded) in an fp64 kernel
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.tensor([leak, sub, maxv], dtype=acc, device=device)


def _ci_inner(x):
    return x.stride(1) == 1 and x.shape[1] > 1


# fp64 has no tensor-core path here (broadcast-multiply-sum): its (BM, BK, BN) product lives in registers, so
# it gets one small fixed tile instead of the autotuned ones (which would not fit).
_FP64_BLOCK = (32, 32, 8)


def _blocks(block, dtype=None, device=None):
    if block is None and dtype == torch.float64 and device is not None and device.type == "cuda":
        block = _FP64_BLOCK
    if block is None:
        return None
    bm, bn, bk = block
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}


def conv2d_triton(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, block=None):
    """Triton backend of pydl.conv2d. ``block=(BLOCK_M, BLOCK_N, BLOCK_K)`` skips autotuning (tests)."""
    N, C, H, W = x.shape
    Co, Cg, KH, KW = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    Ho = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    fmt = _out_format(x)
    y = torch.empty((N, Co, Ho, Wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    keep = act == "general_relu" and save_preact
    z = torch.empty_like(y) if keep else x.new_empty((0,))
    if y.numel() == 0:
        return y, z
    w = w.contiguous()
    mode, prec, acc = _mode_and_precision(x.dtype, x.device)
    Cog, K, M = Co // groups, Cg * KH * KW, N * Ho * Wo
    params = _params(leak, sub, maxv, x.dtype, x.device)
    args = (x, w, b if b is not None else w, y, z if keep else y, params, M, H, W, Ho, Wo, Cg, Cog, K,
            sh, sw, ph, pw, dh, dw, *x.stride(), *y.stride())
    meta = dict(KH=KH, KW=KW, CI_INNER=_ci_inner(x), HAS_BIAS=b is not None, SAVE_Z=keep, ACT=ACT_CODES[act],
                ACC=acc, PRECISION=prec, MODE=mode)
    blk = _blocks(block, x.dtype, x.device)
    if blk is not None:
        grid = (triton.cdiv(M, blk["BLOCK_M"]), triton.cdiv(Cog, blk["BLOCK_N"]), groups)
        _fwd_kernel[grid](*args, **meta, **blk)
    else:
        grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(Cog, m["BLOCK_N"]), groups)  # noqa: E731
        _fwd_tuned[grid](*args, **meta)
    return y, z


def conv2d_backward_triton(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask,
                           block=None, split=None):
    """Triton backend of pydl.conv2d_backward. ``block`` as in :func:`conv2d_triton`; ``split`` fixes the
    number of pixel ranges grad_w is split over (tests)."""
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
    mode, prec, acc = _mode_and_precision(x.dtype, x.device)
    params = _params(leak, sub, maxv, x.dtype, x.device)
    blk = _blocks(block, x.dtype, x.device)
    empty = x.new_empty((0,))
    gx, gw, gb = empty, empty, empty
    code = ACT_CODES[act]

    if output_mask[0]:
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))
        M = N * H * W
        if M:
            args = (dy, zs, w, gx, params, M, H, W, Ho, Wo, Cg, Cog, Cog * KH * KW, sh, sw, ph, pw, dh, dw,
                    *dy.stride(), *gx.stride())
            meta = dict(KH=KH, KW=KW, ACT=code, ACC=acc, PRECISION=prec, MODE=mode)
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
            args = (dy, zs, x, ws, wsb, params, P, H, W, Ho, Wo, Cg, Cog, Co, K, per_split,
                    sh, sw, ph, pw, dh, dw, *dy.stride(), *x.stride())
            meta = dict(KH=KH, KW=KW, CI_INNER=_ci_inner(x), ACT=code, WANT_B=bool(output_mask[2]), ACC=acc,
                        PRECISION=prec, MODE=mode, SPLIT=split)
            if blk is not None:
                _wgrad_kernel[(triton.cdiv(Cog, blk["BLOCK_M"]), triton.cdiv(K, blk["BLOCK_N"]), groups * split)](
                    *args, **meta, **blk)
            else:
                grid = lambda m: (triton.cdiv(Cog, m["BLOCK_M"]), triton.cdiv(K, m["BLOCK_N"]),  # noqa: E731
                                  groups * split)
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
