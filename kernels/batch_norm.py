"""batch_norm in Triton: statistics, normalise (+ fused activation), running update, backward.

Contract and math: pydl/ops/batch_norm.py. Every backend function here has the signature of the reference
one it stands for (plus ``block=`` / ``splits=`` overrides, so tests can show the results do not depend on
the launch shape).

**One tiling for both layouts.** x arrives dense, contiguous (NCL) or channels last (NLC). Channel ``c``'s
values are ``x[o*sO + i*sI + c*sC]`` for ``o < O``, ``i < I``:

    NCL: O = N, I = L (= H*W), sO = C*L, sI = 1, sC = L   -- a channel is N contiguous planes
    NLC: O = 1, I = N*L (rows), sO = 0,  sI = C, sC = 1   -- a channel is a strided column of rows

Every kernel works on 2-D tiles ``[BLOCK_I, BLOCK_C]`` of (element-of-the-channel, channel). The host picks
the tile's shape so the *contiguous* direction is the long one: NCL tiles are ``[up to 1024, 1]`` (a run along
a plane), NLC tiles are ``[rows, 32-64 channels]`` (each row of the tile is contiguous in memory), so loads
coalesce in both layouts, and per-channel values (mean, scale, ...) are loaded once per tile, not per element.

**Reductions (statistics; the backward's two sums) in two stages**, like the layer-norm tutorial's dW/dB:
a grid of (split x channel-block) programs, each reducing its share to per-channel partials in a small
workspace; then a finalize kernel merging each channel's partials *in split order* (deterministic), and
computing what the next step needs (mean/invstd/var; dweight/dbias). Statistics merge with Chan's formula
(count, mean, M2): within a tile a two-pass mean/M2 over registers, across tiles and splits the pairwise
update -- no sum-of-squares cancellation.

Math is fp32 (fp64 for fp64 input); fp16/bf16 are only loaded and stored (Triton's interpreter cannot do bf16
arithmetic, and fp32 is what the accuracy needs anyway).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..ops.batch_norm import channel_count, is_channels_last
from ._activation import ACT_CODES, act_backward, act_forward
from ._jit import device_constants, gpu_twin, jit
from ._moments import block_mean, merge


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

@jit
def _tile(pid_rest, ib_count, ranges_i, c, O, I, sO, sI, sC, C, BLOCK_I: tl.constexpr):
    """Offsets and mask of one elementwise tile: program pid_rest covers (o, i-block)."""
    o = pid_rest // ib_count
    i = (pid_rest % ib_count) * BLOCK_I + ranges_i
    off = o.to(tl.int64) * sO + i.to(tl.int64)[:, None] * sI + c.to(tl.int64)[None, :] * sC
    mask = (i < I)[:, None] & (c < C)[None, :]
    return off, mask


@jit
def _stats_partial(x_ptr, ws_n, ws_a, ws_b, O, I, sO, sI, sC, C, per, n_cb,
                   SPLIT_OUTER: tl.constexpr, ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (split s, channel block): count/mean/M2 of its share of each channel -> workspace row s."""
    pid = tl.program_id(0)
    cb = pid % n_cb
    s = pid // n_cb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if SPLIT_OUTER:
        o0 = s * per
        o1 = tl.minimum(O, o0 + per)
        i0 = 0
        i1 = I
    else:
        o0 = 0
        o1 = O
        i0 = s * per
        i1 = tl.minimum(I, i0 + per)
    n = tl.zeros((), ACC)
    mean = tl.zeros((BLOCK_C,), ACC)
    m2 = tl.zeros((BLOCK_C,), ACC)
    ri = tl.arange(0, BLOCK_I)
    zero64 = tl.zeros((), tl.int64)
    for o in range(o0, o1):
        for ib in range(i0, i1, BLOCK_I):
            i = ib + ri
            imask = i < i1
            mask = imask[:, None] & cmask[None, :]
            # (o + int64 zero): the loop variable may be a plain int (the interpreter) or int32 (compiled)
            off = (o + zero64) * sO + i.to(tl.int64)[:, None] * sI + c.to(tl.int64)[None, :] * sC
            v = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
            # the tile's own mean and M2 (two passes over registers), then Chan's merge into the totals
            cnt = tl.sum(imask.to(ACC), axis=0)
            tmean = block_mean(v, cnt)
            d = tl.where(mask, v - tmean[None, :], 0.0)
            tm2 = tl.sum(d * d, axis=0)
            n, mean, m2 = merge(n, mean, m2, cnt, tmean, tm2)  # overflow-safe: kernels/_moments.py
    w = s.to(tl.int64) * C + c
    tl.store(ws_n + w, tl.zeros((BLOCK_C,), ACC) + n, mask=cmask)
    tl.store(ws_a + w, mean, mask=cmask)
    tl.store(ws_b + w, m2, mask=cmask)


@jit
def _rsqrt(v, ACC: tl.constexpr):
    """1 / sqrt(v), correctly rounded sqrt: fp32 tl.sqrt may be an approximation on a GPU; fp64 is always IEEE."""
    if ACC == tl.float64:
        r = 1.0 / tl.sqrt(v)
    else:
        r = 1.0 / tl.sqrt_rn(v)
    return r


@jit
def _stats_finalize(ws_n, ws_a, ws_b, mean_ptr, out2_ptr, invstd_ptr, C, splits, count, prm_ptr,
                    FORWARD: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merge each channel's partials in split order. FORWARD: write mean, var (out2), invstd; else mean, M2."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    n = tl.zeros((BLOCK_C,), ACC)
    mean = tl.zeros((BLOCK_C,), ACC)
    m2 = tl.zeros((BLOCK_C,), ACC)
    for s in range(0, splits):
        w = s * C + c
        nb = tl.load(ws_n + w, mask=cm, other=0.0)
        mb = tl.load(ws_a + w, mask=cm, other=0.0)
        qb = tl.load(ws_b + w, mask=cm, other=0.0)
        n, mean, m2 = merge(n, mean, m2, nb, mb, qb)  # a split with no values changes nothing
    tl.store(mean_ptr + c, mean, mask=cm)
    if FORWARD:
        var = m2 / tl.maximum(count, 1).to(ACC)
        tl.store(out2_ptr + c, var, mask=cm)
        tl.store(invstd_ptr + c, _rsqrt(var + tl.load(prm_ptr), ACC), mask=cm)
    else:
        tl.store(out2_ptr + c, m2, mask=cm)


@jit
def _act_params(prm_ptr):
    """(leak, sub, maxv) from the parameter tensor [eps, leak, sub, maxv], in the accumulation dtype: a Python
    float argument would reach a compiled kernel as fp32 (0.1 -> 0.10000000149), too coarse for fp64 input."""
    return tl.load(prm_ptr + 1), tl.load(prm_ptr + 2), tl.load(prm_ptr + 3)


@jit
def _scale_shift(mean_ptr, invstd_ptr, w_ptr, b_ptr, c, cmask, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Per-channel (scale, shift) with z = x * scale + shift = (x - mean) * invstd * w + b."""
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
    scale = tl.load(invstd_ptr + c, mask=cmask, other=0.0)
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=cmask, other=0.0).to(mean.dtype)
    shift = -mean * scale
    if HAS_B:
        shift = shift + tl.load(b_ptr + c, mask=cmask, other=0.0).to(mean.dtype)
    return mean, scale, shift


@jit
def _apply_kernel(x_ptr, y_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, O, I, sO, sI, sC, C, ib_count, n_cb,
                  prm_ptr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
                  ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    c = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    off, mask = _tile(pid // n_cb, ib_count, tl.arange(0, BLOCK_I), c, O, I, sO, sI, sC, C, BLOCK_I)
    _mean, scale, shift = _scale_shift(mean_ptr, invstd_ptr, w_ptr, b_ptr, c, c < C, HAS_W, HAS_B)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    leak, sub, maxv = _act_params(prm_ptr)
    y = act_forward(x * scale[None, :] + shift[None, :], leak, sub, maxv, ACT)
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _reduce_partial(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, ws_a, ws_b, O, I, sO, sI, sC, C, per, n_cb,
                    prm_ptr, SPLIT_OUTER: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                    ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (split, channel block): partial sum(dz) and sum(dz * (x - mean)), dz = act'(z) * dy."""
    pid = tl.program_id(0)
    cb = pid % n_cb
    s = pid // n_cb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mean, scale, shift = _scale_shift(mean_ptr, invstd_ptr, w_ptr, b_ptr, c, cmask, HAS_W, HAS_B)
    leak, sub, maxv = _act_params(prm_ptr)
    if SPLIT_OUTER:
        o0 = s * per
        o1 = tl.minimum(O, o0 + per)
        i0 = 0
        i1 = I
    else:
        o0 = 0
        o1 = O
        i0 = s * per
        i1 = tl.minimum(I, i0 + per)
    p = tl.zeros((BLOCK_C,), ACC)
    q = tl.zeros((BLOCK_C,), ACC)
    ri = tl.arange(0, BLOCK_I)
    zero64 = tl.zeros((), tl.int64)
    for o in range(o0, o1):
        for ib in range(i0, i1, BLOCK_I):
            i = ib + ri
            mask = (i < i1)[:, None] & cmask[None, :]
            # (o + int64 zero): the loop variable may be a plain int (the interpreter) or int32 (compiled)
            off = (o + zero64) * sO + i.to(tl.int64)[:, None] * sI + c.to(tl.int64)[None, :] * sC
            x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
            dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
            dz = act_backward(dy, x * scale[None, :] + shift[None, :], leak, sub, maxv, ACT)
            dz = tl.where(mask, dz, 0.0)
            p += tl.sum(dz, axis=0)
            q += tl.sum(dz * (x - mean[None, :]), axis=0)
    w = s.to(tl.int64) * C + c
    tl.store(ws_a + w, p, mask=cmask)
    tl.store(ws_b + w, q, mask=cmask)


@jit
def _reduce_finalize(ws_a, ws_b, invstd_ptr, s1_ptr, s2_ptr, dw_ptr, C, splits, ACC: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Sum the partials in split order: sum_dz (= dbias), sum_dz_xmu, and dweight = sum_dz_xmu * invstd."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    a = tl.zeros((BLOCK_C,), ACC)
    b = tl.zeros((BLOCK_C,), ACC)
    for s in range(0, splits):
        a += tl.load(ws_a + s * C + c, mask=cm, other=0.0)
        b += tl.load(ws_b + s * C + c, mask=cm, other=0.0)
    tl.store(s1_ptr + c, a, mask=cm)
    tl.store(s2_ptr + c, b, mask=cm)
    tl.store(dw_ptr + c, b * tl.load(invstd_ptr + c, mask=cm, other=0.0), mask=cm)


@jit
def _elemt_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, s1_ptr, s2_ptr, count,
                  O, I, sO, sI, sC, C, ib_count, n_cb, prm_ptr,
                  USE_STATS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
                  ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx = k * (dz - mean_dz - (x - mean) * proj): k = w*invstd, mean_dz = sum_dz/n, proj = sum_dz_xmu*invstd^2/n
    (mean_dz = proj = 0 when the statistics were constants: eval)."""
    pid = tl.program_id(0)
    c = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    off, mask = _tile(pid // n_cb, ib_count, tl.arange(0, BLOCK_I), c, O, I, sO, sI, sC, C, BLOCK_I)
    mean, scale, shift = _scale_shift(mean_ptr, invstd_ptr, w_ptr, b_ptr, c, cmask, HAS_W, HAS_B)
    invstd = tl.load(invstd_ptr + c, mask=cmask, other=0.0)
    k = scale  # w * invstd
    if USE_STATS:
        inv_n = 1.0 / tl.maximum(count, 1).to(ACC)
        mean_dz = tl.load(s1_ptr + c, mask=cmask, other=0.0) * inv_n
        proj = tl.load(s2_ptr + c, mask=cmask, other=0.0) * invstd * invstd * inv_n
    else:
        mean_dz = tl.zeros((BLOCK_C,), ACC)
        proj = tl.zeros((BLOCK_C,), ACC)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(ACC)
    leak, sub, maxv = _act_params(prm_ptr)
    dz = act_backward(dy, x * scale[None, :] + shift[None, :], leak, sub, maxv, ACT)
    if USE_STATS:
        dx = k[None, :] * (dz - mean_dz[None, :] - (x - mean[None, :]) * proj[None, :])
    else:  # constants: no path through the statistics (and no inf * 0 = NaN for an inf x)
        dx = k[None, :] * dz
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@jit
def _update_running_kernel(rm_ptr, rv_ptr, mean_ptr, var_ptr, nbt_ptr, params_ptr, C,
                           HAS_NBT: tl.constexpr, BLOCK_C: tl.constexpr):
    """running = (1 - f) * running + f * batch (var made unbiased by n / (n - 1)); f = momentum or 1/nbt.
    params = [momentum, n / (n - 1)] in fp64: a Python float argument would arrive rounded to fp32."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    if HAS_NBT:  # momentum=None: the cumulative average, read on the device (no host sync)
        f = 1.0 / tl.load(nbt_ptr).to(tl.float64)
    else:
        f = tl.load(params_ptr)
    bessel = tl.load(params_ptr + 1)
    rm = _to_f64(tl.load(rm_ptr + c, mask=cm, other=0.0))
    rv = _to_f64(tl.load(rv_ptr + c, mask=cm, other=0.0))
    m = _to_f64(tl.load(mean_ptr + c, mask=cm, other=0.0))
    v = _to_f64(tl.load(var_ptr + c, mask=cm, other=0.0))
    tl.store(rm_ptr + c, _from_f64((1.0 - f) * rm + f * m, rm_ptr.dtype.element_ty), mask=cm)
    tl.store(rv_ptr + c, _from_f64((1.0 - f) * rv + f * v * bessel, rv_ptr.dtype.element_ty), mask=cm)


@jit
def _to_f64(v):
    """Any float -> fp64 through fp32 (exact for fp16/bf16): the interpreter mis-converts bf16 <-> fp64."""
    if v.dtype != tl.float64:
        v = v.to(tl.float32)
    return v.to(tl.float64)


@jit
def _from_f64(v, dtype: tl.constexpr):
    if dtype != tl.float64:
        v = v.to(tl.float32)  # fp64 -> fp32 -> fp16/bf16: rounds twice, at most half an ulp of fp32 apart
    return v.to(dtype)


# --------------------------------------------------------------------------------------------------
# Launch helpers
# --------------------------------------------------------------------------------------------------

class _Geo:
    """The (O, I, C) tiling of a dense x and the tile shape for a block of `block` elements."""

    def __init__(self, x, block=None):
        self.N, self.C = x.shape[0], x.shape[1]
        self.L = channel_count(x) // self.N if self.N else 0
        self.cl = is_channels_last(x)
        self.interp = x.device.type == "cpu"
        C = self.C
        if self.cl:
            self.O, self.I, self.sO, self.sI, self.sC = 1, self.N * self.L, 0, C, 1
        else:
            self.O, self.I, self.sO, self.sI, self.sC = self.N, self.L, C * self.L, 1, self.L
        self.BLOCK_I, self.BLOCK_C = self._tile(block or (256 if self.interp else 2048))
        # The interpreter runs small tiles (each program is Python); the compile test must see the GPU's
        # 2048-element tile, which is what sets a GPU launch's registers and shared memory.
        gpu_i, gpu_c = self._tile(2048)
        self.gpu = gpu_twin(x.device, BLOCK_I=gpu_i, BLOCK_C=gpu_c) if block is None else {}
        self.n_cb = triton.cdiv(C, self.BLOCK_C) if C else 0
        self.ib_count = triton.cdiv(self.I, self.BLOCK_I) if self.I else 0
        self.acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.tl_acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        self.count = self.N * self.L
        self.empty = self.count == 0 or C == 0

    def _tile(self, block):
        """(BLOCK_I, BLOCK_C) for a tile of about ``block`` elements: NLC tiles are rows of up to 64 channels
        (contiguous in C); NCL tiles run along the contiguous L of one channel, more channels when L is short."""
        C = self.C
        if self.cl:
            bc = min(triton.next_power_of_2(max(C, 1)), 64, block)
            return max(1, block // bc), bc
        bi = min(block, triton.next_power_of_2(max(self.L, 1)))
        return bi, max(1, min(triton.next_power_of_2(max(C, 1)), block // bi))

    def split(self, x, splits=None):
        """(splits, per, split_outer) for the two-stage reductions: enough programs to fill the GPU."""
        outer = not self.cl  # NCL: split over the N planes; NLC: over the rows
        extent = self.O if outer else self.I
        if splits is None:
            target = 1 if self.interp else 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
            splits = max(1, min(triton.cdiv(target, max(self.n_cb, 1)), extent if outer else
                                triton.cdiv(extent, self.BLOCK_I)))
        per = max(1, triton.cdiv(extent, splits))
        if not outer:  # whole tiles per split: a tile never straddles two programs' shares
            per = triton.cdiv(per, self.BLOCK_I) * self.BLOCK_I
        splits = triton.cdiv(extent, per)
        return splits, per, outer

    def grid_elem(self):
        return (self.O * self.ib_count * self.n_cb,)


def _params(x, eps=0.0, leak=0.0, sub=0.0, maxv=math.inf):
    """[eps, leak, sub, maxv] as a tensor in the accumulation dtype (see _act_params for why not floats)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return device_constants((float(eps), float(leak), float(sub), float(maxv)), acc, x.device)


def _act_args(x, act, leak, sub, maxv):
    return dict(prm_ptr=_params(x, 0.0, leak, sub, maxv), ACT=ACT_CODES[act])


def _stats_into(x, g: _Geo, outs, forward, eps, splits=None):
    """Run the two-stage statistics; writes (mean, var, invstd) if forward else (mean, M2)."""
    mean, out2, invstd = outs
    ns, per, outer = g.split(x, splits)
    ws = torch.empty((3, ns, g.C), dtype=g.acc, device=x.device)
    _stats_partial[(ns * g.n_cb,)](x, ws[0], ws[1], ws[2], g.O, g.I, g.sO, g.sI, g.sC, g.C, per, g.n_cb,
                                   SPLIT_OUTER=outer, ACC=g.tl_acc, BLOCK_I=g.BLOCK_I, BLOCK_C=g.BLOCK_C, **g.gpu)
    bc = min(triton.next_power_of_2(g.C), 1024)
    _stats_finalize[(triton.cdiv(g.C, bc),)](ws[0], ws[1], ws[2], mean, out2, invstd, g.C, ns, g.count,
                                             _params(x, eps), FORWARD=forward, ACC=g.tl_acc, BLOCK_C=bc)


def _eval_stats(running_mean, running_var, eps, acc):
    """Eval: mean/var are the running stats (copied to the accumulation dtype), invstd = 1/sqrt(var + eps)."""
    mean = running_mean.to(acc, copy=True)
    var = running_var.to(acc, copy=True)
    invstd = torch.empty_like(var)
    C = var.shape[0]
    if C:
        bc = min(triton.next_power_of_2(C), 1024)
        _invstd_kernel[(triton.cdiv(C, bc),)](var, invstd, C, _params(var, eps),
                                              ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK_C=bc)
    return mean, invstd, var


@jit
def _invstd_kernel(var_ptr, invstd_ptr, C, prm_ptr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    v = tl.load(var_ptr + c, mask=c < C, other=1.0)
    tl.store(invstd_ptr + c, _rsqrt(v + tl.load(prm_ptr), ACC), mask=c < C)


def _apply_into(x, y, g, mean, invstd, weight, bias, act, leak, sub, maxv):
    if g.empty:
        return
    _apply_kernel[g.grid_elem()](x, y, mean, invstd, weight if weight is not None else mean,
                                 bias if bias is not None else mean, g.O, g.I, g.sO, g.sI, g.sC, g.C, g.ib_count,
                                 g.n_cb, HAS_W=weight is not None, HAS_B=bias is not None, ACC=g.tl_acc,
                                 BLOCK_I=g.BLOCK_I, BLOCK_C=g.BLOCK_C, **g.gpu, **_act_args(x, act, leak, sub, maxv))


def _reduce(dy, x, g, mean, invstd, weight, bias, act, leak, sub, maxv, splits=None):
    """(sum_dz, sum_dz_xmu, dweight-before-cast)."""
    C = g.C
    s1 = torch.zeros(C, dtype=g.acc, device=x.device)
    s2 = torch.zeros(C, dtype=g.acc, device=x.device)
    dw = torch.zeros(C, dtype=g.acc, device=x.device)
    if g.empty:
        return s1, s2, dw
    ns, per, outer = g.split(x, splits)
    ws = torch.empty((2, ns, C), dtype=g.acc, device=x.device)
    _reduce_partial[(ns * g.n_cb,)](dy, x, mean, invstd, weight if weight is not None else mean,
                                    bias if bias is not None else mean, ws[0], ws[1], g.O, g.I, g.sO, g.sI, g.sC, C,
                                    per, g.n_cb, SPLIT_OUTER=outer, HAS_W=weight is not None,
                                    HAS_B=bias is not None, ACC=g.tl_acc, BLOCK_I=g.BLOCK_I, BLOCK_C=g.BLOCK_C,
                                    **g.gpu, **_act_args(x, act, leak, sub, maxv))
    bc = min(triton.next_power_of_2(C), 1024)
    _reduce_finalize[(triton.cdiv(C, bc),)](ws[0], ws[1], invstd, s1, s2, dw, C, ns, ACC=g.tl_acc, BLOCK_C=bc)
    return s1, s2, dw


def _elemt_into(dy, x, dx, g, mean, invstd, weight, bias, s1, s2, count, use_stats, act, leak, sub, maxv):
    if g.empty:
        return
    _elemt_kernel[g.grid_elem()](dy, x, dx, mean, invstd, weight if weight is not None else mean,
                                 bias if bias is not None else mean, s1, s2, count, g.O, g.I, g.sO, g.sI, g.sC, g.C,
                                 g.ib_count, g.n_cb, USE_STATS=use_stats, HAS_W=weight is not None,
                                 HAS_B=bias is not None, ACC=g.tl_acc, BLOCK_I=g.BLOCK_I, BLOCK_C=g.BLOCK_C,
                                 **g.gpu, **_act_args(x, act, leak, sub, maxv))


# --------------------------------------------------------------------------------------------------
# The backend's functions (signatures of pydl/ops/batch_norm.py's Kernels)
# --------------------------------------------------------------------------------------------------

def stats(x, block=None, splits=None):
    g = _Geo(x, block)
    mean = torch.zeros(g.C, dtype=g.acc, device=x.device)
    m2 = torch.zeros(g.C, dtype=g.acc, device=x.device)
    if not g.empty:
        _stats_into(x, g, (mean, m2, mean), False, 0.0, splits)
    return mean, m2


def apply(x, mean, invstd, weight, bias, act, leak, sub, maxv, block=None):
    g = _Geo(x, block)
    y = torch.empty_like(x)
    _apply_into(x, y, g, mean, invstd, weight, bias, act, leak, sub, maxv)
    return y


def forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, block=None,
            splits=None):
    g = _Geo(x, block)
    if use_batch_stats:
        mean = torch.zeros(g.C, dtype=g.acc, device=x.device)
        var = torch.zeros(g.C, dtype=g.acc, device=x.device)
        invstd = torch.full((g.C,), 1.0 / math.sqrt(eps) if eps > 0 else math.inf, dtype=g.acc, device=x.device)
        if not g.empty:
            _stats_into(x, g, (mean, var, invstd), True, eps, splits)
    else:
        mean, invstd, var = _eval_stats(running_mean, running_var, eps, g.acc)
    y = torch.empty_like(x)
    _apply_into(x, y, g, mean, invstd, weight, bias, act, leak, sub, maxv)
    return y, mean, invstd, var


def update_running(running_mean, running_var, mean, var, count, momentum, num_batches_tracked):
    C = mean.shape[0]
    if count == 0 or C == 0:  # an empty batch leaves the running stats alone (as torch does)
        return
    bc = min(triton.next_power_of_2(C), 1024)
    nbt = num_batches_tracked if momentum is None else mean  # a placeholder pointer when unused
    # strided (C,) running stats (rare) go through a contiguous copy, written back
    rm = running_mean if running_mean.is_contiguous() else running_mean.contiguous()
    rv = running_var if running_var.is_contiguous() else running_var.contiguous()
    params = device_constants((0.0 if momentum is None else float(momentum),
                                count / (count - 1) if count > 1 else 1.0), torch.float64, mean.device)
    _update_running_kernel[(triton.cdiv(C, bc),)](rm, rv, mean, var, nbt, params, C, HAS_NBT=momentum is None,
                                                  BLOCK_C=bc)
    if rm is not running_mean:
        running_mean.copy_(rm)
    if rv is not running_var:
        running_var.copy_(rv)


def backward_reduce(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, block=None, splits=None):
    g = _Geo(x, block)
    s1, s2, _ = _reduce(dy, x, g, mean, invstd, weight, bias, act, leak, sub, maxv, splits)
    return s1, s2


def backward_elemt(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, count, act, leak, sub, maxv, block=None):
    g = _Geo(x, block)
    dx = torch.empty_like(x)
    _elemt_into(dy, x, dx, g, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, count, True, act, leak, sub, maxv)
    return dx


def backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad, block=None,
             splits=None):
    g = _Geo(x, block)
    s1, s2, dw = _reduce(dy, x, g, mean, invstd, weight, bias, act, leak, sub, maxv, splits)
    if input_grad:
        dx = torch.empty_like(x)
        _elemt_into(dy, x, dx, g, mean, invstd, weight, bias, s1, s2, g.count, use_batch_stats, act, leak, sub,
                    maxv)
    else:
        dx = x.new_empty((0,))
    return dx, dw, s1
