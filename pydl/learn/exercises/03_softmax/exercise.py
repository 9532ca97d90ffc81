"""Triton: numerically stable row softmax."""
import torch
import triton

from pydl.learn.harness import Case

TITLE = "Row softmax, numerically stable"
TRACK = "triton"
FILE = "softmax.py"
ENTRY = "softmax"
TEACHES = "a row per program, reductions (tl.max, tl.sum), the max-subtraction trick, identity values for masked lanes"
LEARNED = ("softmax(x) = softmax(x - c) for any c; choosing c = max(x) makes every exponent <= 0, so nothing "
           "overflows. Masked lanes still flow through reductions: loading them as -inf makes exp() give 0.")
MUTANTS = {
    "no max subtraction": [("    x = x - tl.max(x, axis=0)\n", "")],
    "masked lanes load 0": [('other=float("-inf")', "other=0.0")],
    "unmasked store": [("num / den, mask=mask)", "num / den)")],
}


def cases(device):
    out = []
    spec = [(0, 1, 1, 1.0, 0.0), (1, 3, 5, 1.0, 0.0), (2, 7, 33, 3.0, 0.0), (3, 4, 100, 30.0, 1000.0),
            (4, 2, 17, 10.0, -500.0)]
    for seed, rows, cols, scale, shift in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(rows, cols, generator=g) * scale + shift
        exp = torch.softmax(x.double(), dim=1).float()
        for mult in (1, 2):
            block = triton.next_power_of_2(cols) * mult
            note = "large values: exp() overflows unless the row max is subtracted" if shift else ""
            out.append(Case(f"shape=({rows}, {cols}), values ~ {shift:g} +- {scale:g}, BLOCK={block}, seed={seed}",
                            args={"x": x}, outs={"out": ((rows, cols), torch.float32)}, params={"block": block},
                            expected={"out": exp}, tol={"out": (1e-6, 1e-5)}, note=note))
    return out
