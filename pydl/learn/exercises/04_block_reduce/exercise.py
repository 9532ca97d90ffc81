"""Triton: block reduction (sum / max), multi-pass."""
import torch

from pydl.learn.harness import Case

TITLE = "Block reduction: sum and max, pass after pass"
TRACK = "triton"
FILE = "block_reduce.py"
ENTRY = "block_reduce"
TEACHES = "tl.sum / tl.max over a block, identity elements for masked lanes, a tree of launches"
LEARNED = ("A reduction is a tree: each program folds one block into one value, then the partials are folded "
           "again. Masked lanes must hold the operation's identity (0 for +, -inf for max), or the padding "
           "becomes part of the answer.")
GPU_ONLY_BUGS = None
MUTANTS = {
    "max pads with 0": [('other=float("-inf"))\n        r = tl.max', "other=0.0)\n        r = tl.max")],
    "unmasked sum load": [("x = tl.load(x_ptr + offs, mask=mask, other=0.0)", "x = tl.load(x_ptr + offs)")],
    "masked load without other": [("x = tl.load(x_ptr + offs, mask=mask, other=0.0)", "x = tl.load(x_ptr + offs, mask=mask)")],
    "one pass only": [("        cur, n = dst, programs\n", "        return\n")],
}


def cases(device):
    out = []
    spec = [(0, 1, 16, 0.0), (1, 5, 16, -3.0), (2, 100, 16, 0.0), (3, 1000, 64, -10.0), (4, 4097, 128, 0.0),
            (5, 300, 32, -100.0)]
    for seed, n, block, shift in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, generator=g) + shift
        note = "all values negative: padding lanes read as 0 would win the max" if shift < -2 else ""
        out.append(Case(f"n={n}, BLOCK={block}, seed={seed}" + (", negative data" if shift < -2 else ""),
                        args={"x": x}, outs={"total": ((1,), torch.float32), "maximum": ((1,), torch.float32)},
                        params={"block": block},
                        expected={"total": x.double().sum().reshape(1).float(), "maximum": x.max().reshape(1)},
                        tol={"total": (1e-3, 1e-4), "maximum": (0.0, 0.0)}, note=note))
    return out
