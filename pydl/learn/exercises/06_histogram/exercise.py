"""Triton: histogram with atomics (privatised)."""
import torch

from pydl.learn.harness import Case

TITLE = "Histogram with atomics, privatised per program"
TRACK = "triton"
FILE = "histogram.py"
ENTRY = "histogram"
TEACHES = "tl.atomic_add, contention, privatisation (tl.histogram per program, one atomic per bin), exact integer results"
LEARNED = ("Many programs adding to the same counters need atomics; one atomic per element makes them queue "
           "up on hot bins. Counting privately first (registers/shared memory) and merging once per bin "
           "removes almost all of that contention -- and integer counts stay exact in any order.")
GPU_ONLY_BUGS = ("a plain load-add-store instead of tl.atomic_add: the interpreter runs programs one after "
                 "another, so no update is lost here, while on a GPU programs racing on the same bin lose counts")
MUTANTS = {
    "padding lanes counted": [("inside = mask & (x >= lo) & (x < hi)", "inside = (x >= lo) & (x < hi)")],
    "not zeroed": [("    hist.zero_()\n", "")],
    "upper edge included": [("(x < hi)", "(x <= hi)")],
}


def cases(device):
    out = []
    spec = [(0, 1, 4, 16), (1, 50, 8, 16), (2, 1000, 10, 64), (3, 3000, 32, 128), (4, 777, 5, 32)]
    for seed, n, bins, block in spec:
        g = torch.Generator().manual_seed(seed)
        lo, hi = -2.0, 3.0
        w = (hi - lo) / bins
        # values at bin centres +- 0.3 bin (no value sits on an edge, where float rounding could differ),
        # plus some outside [lo, hi) and some exactly at hi (not counted)
        k = torch.randint(-2, bins + 2, (n,), generator=g)
        x = lo + (k.double() + 0.5 + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 0.6) * w
        if n > 10:
            x[::7] = hi
        x = x.float()
        inside = (x >= lo) & (x < hi)
        b = ((x[inside] - lo) * bins / (hi - lo)).long().clamp(0, bins - 1)
        exp = torch.bincount(b, minlength=bins).to(torch.int32)
        out.append(Case(f"n={n}, bins={bins}, BLOCK={block}, seed={seed}", args={"x": x},
                        outs={"hist": ((bins,), torch.int32)}, params={"lo": lo, "hi": hi, "block": block},
                        expected={"hist": exp}))
    return out
