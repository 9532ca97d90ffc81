"""Triton: fused GeneralRelu."""
import math

import torch
import torch.nn.functional as F

from pydl.learn.harness import Case

TITLE = "Fused GeneralRelu (leaky ReLU, shift, clamp) in one pass"
TRACK = "triton"
FILE = "general_relu.py"
ENTRY = "general_relu"
TEACHES = "kernel fusion: three elementwise ops, one read + one write; tl.where, scalar arguments"
LEARNED = ("Elementwise ops are memory-bound: torch runs leaky_relu, sub and clamp as three kernels, each "
           "reading and writing the whole tensor. Fused, the math happens in registers and memory is touched "
           "once -- about 3x less traffic for the same result.")
MUTANTS = {
    "clamp before the shift": [("    y = y - sub\n    y = tl.minimum(y, maxv)", "    y = tl.minimum(y, maxv)\n    y = y - sub")],
    "unmasked store": [("tl.store(out_ptr + offs, y, mask=mask)", "tl.store(out_ptr + offs, y)")],
    # the store stays masked, so every output is right: only the load's addresses give it away
    "unmasked load": [("tl.load(x_ptr + offs, mask=mask, other=0.0)", "tl.load(x_ptr + offs)")],
}


def reference(x, leak, sub, maxv):
    return (F.leaky_relu(x.double(), leak) - sub).clamp_max(maxv).float()


def cases(device):
    out = []
    spec = [(0, (1,), 0.1, 0.4, 6.0, 16), (1, (7, 9), 0.1, 0.4, 6.0, 16), (2, (3, 5, 11), 0.0, 0.0, math.inf, 64),
            (3, (1000,), 0.2, 0.5, 2.0, 128), (4, (2, 3, 4, 5), 0.01, 0.1, 1.5, 32)]
    for seed, shape, leak, sub, maxv, block in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g) * 4
        out.append(Case(f"shape={shape}, leak={leak}, sub={sub}, maxv={maxv}, BLOCK={block}, seed={seed}",
                        args={"x": x}, outs={"out": (shape, torch.float32)},
                        params={"leak": leak, "sub": sub, "maxv": maxv, "block": block},
                        expected={"out": reference(x, leak, sub, maxv)}, tol={"out": (1e-6, 1e-6)}))
    return out
