"""Exercise: pydl's act_stats kernel -- every statistic a training debugger wants, in ONE read of the data.

For each group of values (the whole tensor, or each channel), one program computes:
  fstats[g] = (mean, M2, min, max) over the FINITE values (NaN/+-Inf are counted, not averaged);
  counts[g] = (numel, near_zero (|x| <= eps), nan, posinf, neginf, below (< lo), above (> hi));
  hist[g]   = `bins` counts over [lo, hi]: bin = min(int((x - lo) * bins / (hi - lo)), bins - 1),
              so x == hi lands in the last bin.
The launcher (given) lays the groups out as contiguous rows and allocates the outputs; `act_stats` has the
signature of pydl's Triton backend, so once your kernel passes, the checker plugs it into pydl
(`Op.override("triton", ...)`) and runs it inside a small CNN.
"""
import torch
import triton
import triton.language as tl

# extra histogram slots after the `bins` real ones, in the order of counts[:, 2:7]
NAN, POSINF, NEGINF, BELOW, ABOVE = 0, 1, 2, 3, 4


@triton.jit
def act_stats_kernel(x_ptr, fstats_ptr, counts_ptr, hist_ptr, M, lo, hi, eps,
                     BINS: tl.constexpr, NSLOTS: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    row = x_ptr + g.to(tl.int64) * M
    n = tl.zeros((), dtype=tl.float32)       # finite values so far
    mean = tl.zeros((), dtype=tl.float32)
    m2 = tl.zeros((), dtype=tl.float32)
    mn = tl.full((), float("inf"), tl.float32)
    mx = tl.full((), float("-inf"), tl.float32)
    nz = tl.zeros((), dtype=tl.int32)
    local = tl.zeros((NSLOTS,), dtype=tl.int32)  # this program's histogram: bins, 5 extra slots, a spare
    for start in range(0, M, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < M
        v = tl.load(row + offs, mask=inb, other=0.0).to(tl.float32)
        # TODO(1): `fin` = the lanes that are in bounds AND finite (hint: v - v is 0 only for finite v),
        # then this block's count, mean and M2 over those lanes, merged into (n, mean, m2) -- Chan's formula
        # from the Welford exercise.
        # BEGIN SOLUTION
        fin = inb & (v - v == 0)
        nb = tl.sum(fin.to(tl.float32), axis=0)
        bmean = tl.sum(tl.where(fin, v, 0.0), axis=0) / tl.maximum(nb, 1.0)
        d = tl.where(fin, v - bmean, 0.0)
        bm2 = tl.sum(d * d, axis=0)
        tot = n + nb
        w = nb / tl.maximum(tot, 1.0)
        delta = bmean - mean
        mean = mean + delta * w
        m2 = m2 + bm2 + delta * delta * n * w
        n = tot
        # END SOLUTION
        # TODO(2): min and max over the finite lanes; near-zero count over the in-bounds lanes.
        # BEGIN SOLUTION
        mn = tl.minimum(mn, tl.min(tl.where(fin, v, float("inf")), axis=0))
        mx = tl.maximum(mx, tl.max(tl.where(fin, v, float("-inf")), axis=0))
        nz += tl.sum((inb & (v <= eps) & (v >= -eps)).to(tl.int32), axis=0)
        # END SOLUTION
        # TODO(3): the slot of every lane: its bin for finite values in [lo, hi], else BINS + one of
        # NAN/POSINF/NEGINF/BELOW/ABOVE, and NSLOTS - 1 (the spare slot) for out-of-bounds lanes;
        # then add the block to `local` with tl.histogram.
        # BEGIN SOLUTION
        inside = fin & (v >= lo) & (v <= hi)
        t = tl.math.div_rn((v - lo) * BINS, hi - lo)  # IEEE division, like every other backend
        s = tl.minimum(tl.where(inside, t, 0.0).to(tl.int32), BINS - 1)
        s = tl.where(fin & (v < lo), BINS + 3, s)
        s = tl.where(fin & (v > hi), BINS + 4, s)
        s = tl.where(v != v, BINS + 0, s)
        s = tl.where(v == float("inf"), BINS + 1, s)
        s = tl.where(v == float("-inf"), BINS + 2, s)
        s = tl.where(inb, s, NSLOTS - 1)
        local += tl.histogram(s, NSLOTS)
        # END SOLUTION
    has = n > 0
    nan = float("nan")
    tl.store(fstats_ptr + g * 4 + 0, tl.where(has, mean, nan))
    tl.store(fstats_ptr + g * 4 + 1, tl.where(has, m2, 0.0))
    tl.store(fstats_ptr + g * 4 + 2, tl.where(has, mn, nan))
    tl.store(fstats_ptr + g * 4 + 3, tl.where(has, mx, nan))
    tl.store(counts_ptr + g * 7 + 0, tl.zeros((), dtype=tl.int64) + M)  # (M may arrive as a constant 1)
    tl.store(counts_ptr + g * 7 + 1, nz.to(tl.int64))
    slot = tl.arange(0, NSLOTS)
    h = local.to(tl.int64)
    tl.store(hist_ptr + g * BINS + slot, h, mask=slot < BINS)
    tl.store(counts_ptr + g * 7 + 2 + (slot - BINS), h, mask=(slot >= BINS) & (slot < BINS + 5))


def act_stats(x, bins, lo, hi, eps, per_channel, block=64):
    """Same contract as pydl's backends: returns (fstats (G, 4), counts (G, 7) int64, hist (G, bins) int64)."""
    G = x.shape[1] if per_channel else 1
    rows = x.transpose(0, 1).reshape(G, -1) if per_channel else x.reshape(1, -1)
    rows = rows.to(torch.float32).contiguous()
    M = rows.shape[1]
    dev = x.device
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    fstats = torch.full((G, 4), float("nan"), dtype=torch.float32, device=dev)
    counts = torch.full((G, 7), -1, dtype=torch.int64, device=dev)
    hist = torch.full((G, bins), -1, dtype=torch.int64, device=dev)
    if G > 0:
        nslots = triton.next_power_of_2(bins + 6)
        act_stats_kernel[(G,)](rows, fstats, counts, hist, M, lo, hi, eps, BINS=bins, NSLOTS=nslots, BLOCK=block)
    return fstats.to(acc), counts, hist
