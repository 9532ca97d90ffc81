"""act_stats in Triton: mean/M2/min/max, near-zero/NaN/Inf counts and a histogram in one read of the tensor.

Same contract and bin rule as every other backend (see pydl/ops/act_stats.py). The shape of the solution:

1. ``_partial_kernel``: the grid is (groups x splits) programs. A program walks its share of one group's
   elements BLOCK at a time. For each block it computes the block's own count/mean/M2 (two passes over
   registers, so no cancellation) and merges them into its running totals with Chan's formula -- the same
   merge that combines programs later. Histogram slots of the block go through ``tl.histogram`` into a
   per-program histogram held in registers; at the end it is added to the global int64 counts with one
   atomic per bin, not one per element (post-ReLU data piles onto one bin: per-element atomics on one
   address would serialise).
2. ``_finalize_kernel``: merges each group's per-program partials in a fixed order (deterministic) and
   writes the outputs.

Elements of group g are ``x[o*so + g*sg + i*si]`` for ``o < outer, i < inner``: whole tensors (one group),
NCHW and channels_last per-channel all read in place, without a copy.

On a CPU tensor this runs in Triton's interpreter (see kernels/_jit.py): every program in turn, with numpy.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._layout import is_dense
from ._jit import device_constants, gpu_twin, jit
from ._moments import block_mean, merge

# extra slots after the bins, in the order of columns 2..6 of `counts`
NAN, POSINF, NEGINF, BELOW, ABOVE, NUM_EXTRA = 0, 1, 2, 3, 4, 5
MAX_REGISTER_SLOTS = 4096  # beyond this the per-program histogram would not fit in registers


@jit
def _partial_kernel(x_ptr, params_ptr, ws_n_ptr, ws_f_ptr, counts_ptr, hist_ptr,
                    outer, inner, so, sg, si, splits, per_split,
                    BINS: tl.constexpr, NSLOTS: tl.constexpr, REG_HIST: tl.constexpr,
                    ACC: tl.constexpr, BLOCK: tl.constexpr, ONE_SPAN: tl.constexpr):
    pid = tl.program_id(0)
    # Offsets in int64: g * sg, g * BINS and g * splits exceed int32 on huge tensors (as in the CUDA kernel).
    g = (pid // splits).to(tl.int64)
    split = pid % splits
    lo = tl.load(params_ptr + 0)
    hi = tl.load(params_ptr + 1)
    eps = tl.load(params_ptr + 2)
    width = hi - lo
    # tl.cast, not outer.to(): on a GPU an int argument equal to 1 is specialised to a compile-time constant
    # (a plain Python int, which has no .to), and outer == 1 for every whole tensor and for N == 1.
    per_group = tl.cast(outer, tl.int64) * inner
    e_begin = split.to(tl.int64) * per_split
    e_end = tl.minimum(e_begin + per_split, per_group)

    n = tl.zeros((), dtype=tl.int64)
    mean = tl.zeros((), dtype=ACC)
    m2 = tl.zeros((), dtype=ACC)
    mn = tl.full((), float("inf"), ACC)
    mx = tl.full((), float("-inf"), ACC)
    nz = tl.zeros((), dtype=tl.int64)
    local_hist = tl.zeros((NSLOTS,), dtype=tl.int32)
    for base in range(e_begin, e_end, BLOCK):
        e = base + tl.arange(0, BLOCK).to(tl.int64)
        inb = e < e_end
        if ONE_SPAN:  # whole tensor (or N == 1): no 64-bit division per element, which costs more than the load
            off = g * sg + e * si
        else:
            o = e // inner
            off = o * so + g * sg + (e - o * inner) * si
        v = tl.load(x_ptr + off, mask=inb, other=0.0).to(ACC)

        fin = inb & (v - v == 0)  # NaN - NaN and inf - inf are NaN, not 0
        nb = tl.sum(fin.to(tl.int64), axis=0)
        bmean = block_mean(tl.where(fin, v, 0.0), tl.maximum(nb, 1).to(ACC))
        d = tl.where(fin, v - bmean, 0.0)
        bm2 = tl.sum(d * d, axis=0)
        # Chan: merge (nb, bmean, bm2) into (n, mean, m2); no-ops when nb == 0 (kernels/_moments.py)
        n, mean, m2 = merge(n, mean, m2, nb, bmean, bm2)
        mn = tl.minimum(mn, tl.min(tl.where(fin, v, float("inf")), axis=0))
        mx = tl.maximum(mx, tl.max(tl.where(fin, v, float("-inf")), axis=0))
        nz += tl.sum((inb & (v <= eps) & (v >= -eps)).to(tl.int64), axis=0)

        # the bin rule: t = ((v - lo) * bins) / (hi - lo) with IEEE division, last bin closed
        inside = fin & (v >= lo) & (v <= hi)
        if ACC == tl.float64:
            t = ((v - lo) * BINS) / width  # fp64 division is always IEEE-rounded
        else:
            t = tl.math.div_rn((v - lo) * BINS, width)  # fp32 `/` may be approximate on a GPU
        s = tl.minimum(tl.where(inside, t, 0.0).to(tl.int32), BINS - 1)
        s = tl.where(fin & (v < lo), BINS + 3, s)
        s = tl.where(fin & (v > hi), BINS + 4, s)
        s = tl.where(v != v, BINS + 0, s)
        s = tl.where(v == float("inf"), BINS + 1, s)
        s = tl.where(v == float("-inf"), BINS + 2, s)
        if REG_HIST:
            s = tl.where(inb, s, NSLOTS - 1)  # a spare slot past the real ones soaks up the masked lanes
            local_hist += tl.histogram(s, NSLOTS)
        else:
            dst = tl.where(s < BINS, hist_ptr + g * BINS + s, counts_ptr + g * 7 + 2 + (s - BINS))
            tl.atomic_add(dst, tl.full((BLOCK,), 1, tl.int64), mask=inb)

    p = g * splits + split
    tl.store(ws_n_ptr + p, n)
    tl.store(ws_f_ptr + p * 4 + 0, mean)
    tl.store(ws_f_ptr + p * 4 + 1, m2)
    tl.store(ws_f_ptr + p * 4 + 2, mn)
    tl.store(ws_f_ptr + p * 4 + 3, mx)
    tl.atomic_add(counts_ptr + g * 7 + 1, nz)
    if REG_HIST:
        slot = tl.arange(0, NSLOTS)
        h = local_hist.to(tl.int64)
        is_bin = slot < BINS
        is_extra = (slot >= BINS) & (slot < BINS + 5)
        tl.atomic_add(hist_ptr + g * BINS + slot, h, mask=is_bin & (h > 0))
        tl.atomic_add(counts_ptr + g * 7 + 2 + (slot - BINS), h, mask=is_extra & (h > 0))


@jit
def _finalize_kernel(ws_n_ptr, ws_f_ptr, fstats_ptr, counts_ptr, groups, splits, per_group,
                     ACC: tl.constexpr, BLOCK_G: tl.constexpr):
    g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)  # int64: g * splits * 4 can exceed int32
    gm = g < groups
    n = tl.zeros((BLOCK_G,), dtype=tl.int64)
    mean = tl.zeros((BLOCK_G,), dtype=ACC)
    m2 = tl.zeros((BLOCK_G,), dtype=ACC)
    mn = tl.full((BLOCK_G,), float("inf"), ACC)
    mx = tl.full((BLOCK_G,), float("-inf"), ACC)
    for s in range(0, splits):  # in order: the float result does not depend on scheduling
        p = g * splits + s
        nb = tl.load(ws_n_ptr + p, mask=gm, other=0)
        bmean = tl.load(ws_f_ptr + p * 4 + 0, mask=gm, other=0.0)
        bm2 = tl.load(ws_f_ptr + p * 4 + 1, mask=gm, other=0.0)
        n, mean, m2 = merge(n, mean, m2, nb, bmean, bm2)
        mn = tl.minimum(mn, tl.load(ws_f_ptr + p * 4 + 2, mask=gm, other=float("inf")))
        mx = tl.maximum(mx, tl.load(ws_f_ptr + p * 4 + 3, mask=gm, other=float("-inf")))
    has = n > 0
    nan = float("nan")
    tl.store(fstats_ptr + g * 4 + 0, tl.where(has, mean, nan), mask=gm)
    tl.store(fstats_ptr + g * 4 + 1, tl.where(has, m2, 0.0), mask=gm)
    tl.store(fstats_ptr + g * 4 + 2, tl.where(has, mn, nan), mask=gm)
    tl.store(fstats_ptr + g * 4 + 3, tl.where(has, mx, nan), mask=gm)
    tl.store(counts_ptr + g * 7 + 0, tl.zeros((BLOCK_G,), tl.int64) + per_group, mask=gm)


def _layout(x: torch.Tensor, per_channel: bool):
    """(x, outer, groups, inner, so, sg, si): a view of x as groups of strided spans, copying only if needed."""
    if not per_channel:
        x = x if is_dense(x) else x.contiguous()
        return x, 1, 1, x.numel(), 0, 0, 1
    inner = 1
    for d in x.shape[2:]:
        inner *= d
    x3 = x.reshape(x.shape[0], x.shape[1], inner)  # a view for NCHW and channels_last alike
    return (x3, x3.shape[0], x3.shape[1], x3.shape[2]) + tuple(x3.stride())


def act_stats_triton(x, bins, lo, hi, eps, per_channel, block=None, splits=None):
    """The Triton backend of pydl.act_stats (same outputs as the other backends). ``block`` and ``splits``
    override the launch shape (tests use them to check that results do not depend on it)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xv, outer, groups, inner, so, sg, si = _layout(x, per_channel)
    dev = x.device
    fstats = torch.empty((groups, 4), dtype=acc, device=dev)
    counts = torch.zeros((groups, 7), dtype=torch.int64, device=dev)
    hist = torch.zeros((groups, bins), dtype=torch.int64, device=dev)
    if groups == 0:
        return fstats, counts, hist
    per_group = outer * inner
    interp = dev.type == "cpu"
    gpu = {} if block else gpu_twin(dev, BLOCK=1024)  # the compile test compiles the GPU's tile (kernels/_jit.py)
    block = block or (128 if interp else 1024)
    if splits is None:
        target = 4 * torch.cuda.get_device_properties(dev).multi_processor_count if not interp else 1
        splits = max(1, min(triton.cdiv(target, groups), triton.cdiv(per_group, 4 * block)))
    per_split = triton.cdiv(per_group, splits) if per_group else 1
    ws_n = torch.empty(groups * splits, dtype=torch.int64, device=dev)
    ws_f = torch.empty(groups * splits * 4, dtype=acc, device=dev)
    # lo, hi, eps as a tensor in the accumulator dtype: a Python float argument would arrive as float32
    params = device_constants((float(lo), float(hi), float(eps)), acc, dev)
    nslots = triton.next_power_of_2(bins + NUM_EXTRA + 1)
    reg_hist = nslots <= MAX_REGISTER_SLOTS
    tl_acc = tl.float64 if acc == torch.float64 else tl.float32
    _partial_kernel[(groups * splits,)](
        xv, params, ws_n, ws_f, counts, hist, outer, inner, so, sg, si, splits, per_split,
        BINS=bins, NSLOTS=nslots if reg_hist else 1, REG_HIST=reg_hist, ACC=tl_acc, BLOCK=block,
        ONE_SPAN=outer == 1, **gpu)
    block_g = 128 if groups >= 128 else triton.next_power_of_2(groups)
    _finalize_kernel[(triton.cdiv(groups, block_g),)](
        ws_n, ws_f, fstats, counts, groups, splits, per_group, ACC=tl_acc, BLOCK_G=block_g)
    return fstats, counts, hist
