"""Exercise: a histogram with atomics, privatised per program.

The checker calls `histogram(x, hist, lo, hi, block)`: x is 1-D float32, `hist` an int32 output of `bins`
counters. Bin b counts the x with lo + b*w <= x < lo + (b+1)*w, w = (hi - lo) / bins, i.e.
b = int((x - lo) * bins / (hi - lo)); values outside [lo, hi) are not counted.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def histogram_kernel(x_ptr, hist_ptr, n, lo, hi, BINS: tl.constexpr, NSLOTS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    # TODO(1): the bin of every lane, and which lanes count (valid AND lo <= x < hi).
    # BEGIN SOLUTION
    inside = mask & (x >= lo) & (x < hi)
    b = ((x - lo) * BINS / (hi - lo)).to(tl.int32)
    b = tl.minimum(tl.maximum(b, 0), BINS - 1)
    # END SOLUTION
    # TODO(2): count this program's lanes in a private histogram of NSLOTS slots (tl.histogram), sending
    # the lanes that do not count to the spare slot NSLOTS - 1; then add the first BINS slots to the global
    # histogram with ONE tl.atomic_add per bin (not one per element).
    # BEGIN SOLUTION
    slot = tl.where(inside, b, NSLOTS - 1)
    local = tl.histogram(slot, NSLOTS)
    bins = tl.arange(0, NSLOTS)
    tl.atomic_add(hist_ptr + bins, local, mask=(bins < BINS) & (local > 0))
    # END SOLUTION


def histogram(x: torch.Tensor, hist: torch.Tensor, lo: float, hi: float, block: int) -> None:
    n, bins = x.numel(), hist.numel()
    nslots = triton.next_power_of_2(bins + 1)  # room for every bin plus a spare slot
    # TODO(3): the kernel ADDS into hist. What must hist hold before the launch?
    # BEGIN SOLUTION
    hist.zero_()
    # END SOLUTION
    histogram_kernel[(triton.cdiv(n, block),)](x, hist, n, lo, hi, BINS=bins, NSLOTS=nslots, BLOCK=block)
