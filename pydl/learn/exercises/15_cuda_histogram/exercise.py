"""CUDA: privatised histogram."""
import torch

from pydl.learn.harness import Case

TITLE = "Privatised histogram: shared-memory atomics, then one global atomic per bin"
TRACK = "cuda"
FILE = "cuda_histogram.cu"
ENTRY = "histogram"
SIGNATURE = [("x", "const float*"), ("hist", "unsigned int*"), ("n", "int"), ("lo", "float"), ("hi", "float"),
             ("bins", "int"), ("block", "int"), ("max_blocks", "int")]
TEACHES = "dynamic shared memory, shared-memory atomics, privatisation, barriers around a shared structure"
LEARNED = ("Counting into a per-block copy in shared memory turns millions of contended global atomics into "
           "fast on-chip ones plus `bins` global atomics per block. The copy must be zeroed before and merged "
           "after every thread is done -- two barriers.")
GPU_ONLY_BUGS = ("the cost of contention when many threads hit the same bin; lost updates from non-atomic "
                 "increments (`local[b]++`, `hist[b] += ...`) are already reported by the emulator's racecheck")
MUTANTS = {
    "shared counts not zeroed": [("  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;\n", "")],
    "no barrier after zeroing": [("local[b] = 0;\n  __syncthreads();", "local[b] = 0;")],
    "non-atomic merge": [("if (local[b]) atomicAdd(&hist[b], local[b]);", "if (local[b]) hist[b] += local[b];")],
    "upper edge counted": [("v < hi", "v <= hi")],
}


def cases(device):
    out = []
    spec = [(0, 1, 4, 32, 4), (1, 50, 8, 64, 2), (2, 1000, 10, 128, 3), (3, 3000, 64, 256, 4), (4, 777, 5, 32, 50)]
    for seed, n, bins, block, max_blocks in spec:
        g = torch.Generator().manual_seed(seed)
        lo, hi = -2.0, 3.0
        w = (hi - lo) / bins
        k = torch.randint(-2, bins + 2, (n,), generator=g)
        x = lo + (k.double() + 0.5 + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 0.6) * w
        if n > 10:
            x[::7] = hi
        x = x.float()
        inside = (x >= lo) & (x < hi)
        b = ((x[inside] - lo) * bins / (hi - lo)).long().clamp(0, bins - 1)
        exp = torch.bincount(b, minlength=bins).to(torch.int32)
        out.append(Case(f"n={n}, bins={bins}, block={block}, max_blocks={max_blocks}, seed={seed}", args={"x": x},
                        outs={"hist": ((bins,), torch.int32)},
                        params={"n": n, "lo": lo, "hi": hi, "bins": bins, "block": block, "max_blocks": max_blocks,
                                "seed": seed},
                        expected={"hist": exp}))
    return out
