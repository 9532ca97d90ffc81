"""Triton: vector add with masks."""
import torch

from pydl.learn.harness import Case

TITLE = "Vector add with masks"
TRACK = "triton"
FILE = "vector_add.py"
ENTRY = "vector_add"
TEACHES = "program ids, tl.arange offsets, masks for sizes that are not block multiples, the grid"
LEARNED = ("A Triton program works on a whole BLOCK of elements at once; the grid is cdiv(n, BLOCK) programs, "
           "and the mask keeps the last, partial block from reading or writing past the end.")
MUTANTS = {
    "unmasked store": [("tl.store(out_ptr + offs, x + y, mask=mask)", "tl.store(out_ptr + offs, x + y)")],
    "mask always true": [("mask = offs < n", "mask = offs >= 0")],
    "grid rounded down": [("triton.cdiv(n, block)", "max(1, n // block)")],
    # the store is still masked, so no output changes: only the load's addresses give it away
    "unmasked loads": [("x = tl.load(x_ptr + offs, mask=mask)", "x = tl.load(x_ptr + offs)"),
                       ("y = tl.load(y_ptr + offs, mask=mask)", "y = tl.load(y_ptr + offs)")],
}


def cases(device):
    out = []
    for seed, n, block in [(0, 1, 16), (1, 37, 16), (2, 100, 64), (3, 1000, 128), (4, 1025, 256), (5, 64, 64)]:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
        out.append(Case(f"n={n}, BLOCK={block}, seed={seed}", args={"x": x, "y": y},
                        outs={"out": ((n,), torch.float32)}, params={"block": block},
                        expected={"out": x + y}, tol={"out": (1e-6, 1e-6)}))
    return out
