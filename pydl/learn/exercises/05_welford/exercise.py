"""Triton: mean & variance with Welford/Chan merging."""
import torch

from pydl.learn.harness import Case

TITLE = "Mean and variance with Welford/Chan merging"
TRACK = "triton"
FILE = "welford.py"
ENTRY = "row_mean_var"
TEACHES = "catastrophic cancellation in E[x^2]-E[x]^2, per-block two-pass stats, Chan's parallel merge"
LEARNED = ("E[x^2] - E[x]^2 subtracts two huge, nearly equal numbers and keeps only rounding noise when "
           "|mean| >> std. Statistics of small blocks (computed around their own mean) merged with Chan's "
           "formula stay accurate, need one read of the data, and merge the same way across programs or GPUs.")
MUTANTS = {
    "no delta^2 term": [("m2 = m2 + bm2 + delta * delta * (n * nb / tot)", "m2 = m2 + bm2")],
    "padding in the deviations": [("d = tl.where(mask, x - bmean, 0.0)", "d = x - bmean")],
    "sum of squares": [("        d = tl.where(mask, x - bmean, 0.0)\n        bm2 = tl.sum(d * d, axis=0)",
                        "        bm2 = tl.sum(x * x, axis=0) - nb * bmean * bmean")],
}


def cases(device):
    out = []
    spec = [(0, 1, 1, 0.0, 16), (1, 3, 37, 0.0, 16), (2, 4, 300, 3000.0, 16), (3, 2, 300, 3000.0, 64),
            (4, 5, 64, -50.0, 64), (5, 2, 1000, 0.0, 128)]
    for seed, rows, cols, shift, block in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(rows, cols, generator=g) + shift
        xd = x.double()
        note = "mean 3000, std 1: sum-of-squares loses every digit here" if shift > 100 else ""
        out.append(Case(f"shape=({rows}, {cols}), mean ~ {shift:g}, BLOCK={block}, seed={seed}", args={"x": x},
                        outs={"mean": ((rows,), torch.float32), "var": ((rows,), torch.float32)},
                        params={"block": block},
                        expected={"mean": xd.mean(1).float(), "var": xd.var(1, correction=0).float()},
                        tol={"mean": (1e-4, 1e-5), "var": (1e-3, 2e-3)}, note=note))
    return out
