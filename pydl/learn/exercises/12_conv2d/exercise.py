"""Triton: implicit-GEMM conv2d."""
import torch
import torch.nn.functional as F

from pydl.learn.harness import Case

TITLE = "conv2d as an implicit GEMM"
TRACK = "triton"
FILE = "conv2d.py"
ENTRY = "conv2d"
TEACHES = "mapping a convolution onto matmul tiles, index decomposition, padding as masks, no im2col buffer"
LEARNED = ("A convolution is a matrix product whose A matrix (the image patches) is computed on the fly from "
           "indices instead of materialised (im2col would write C*R*S times the image to memory). Padding is "
           "just a mask. Everything you learned about tiling matmuls carries over.")
MUTANTS = {
    "padding not masked": [("& (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)", "")],
    "r and s swapped": [("ih = p[:, None] * stride - pad + r[None, :]", "ih = p[:, None] * stride - pad + s[None, :]"),
                        ("iw = q[:, None] * stride - pad + s[None, :]", "iw = q[:, None] * stride - pad + r[None, :]")],
    "unmasked store": [("tl.store(dst, acc, mask=(rm[:, None] < M) & (rk[None, :] < K))", "tl.store(dst, acc)")],
}


def cases(device):
    out = []
    tol = (1e-4, 1e-4) if device == "cpu" else (3e-2, 2e-2)  # TF32 on GPUs
    spec = [(0, (1, 1, 1, 1), (1, 1, 1, 1), 1, 0, (16, 16, 16)),
            (1, (2, 3, 7, 7), (5, 3, 3, 3), 1, 1, (16, 16, 16)),
            (2, (1, 2, 8, 6), (4, 2, 3, 3), 2, 0, (32, 16, 16)),
            (3, (2, 4, 5, 5), (3, 4, 1, 1), 1, 0, (16, 16, 16)),
            (4, (1, 3, 9, 9), (17, 3, 5, 5), 2, 2, (32, 32, 32))]
    for seed, xs, ws, stride, pad, (bm, bn, bk) in spec:
        g = torch.Generator().manual_seed(seed)
        x, w = torch.randn(xs, generator=g), torch.randn(ws, generator=g)
        ref = F.conv2d(x.double(), w.double(), stride=stride, padding=pad).float()
        out.append(Case(f"x={xs}, w={ws}, stride={stride}, pad={pad}, tiles {bm}x{bn}x{bk}, seed={seed}",
                        args={"x": x, "w": w}, outs={"out": (tuple(ref.shape), torch.float32)},
                        params={"stride": stride, "pad": pad, "bm": bm, "bn": bn, "bk": bk},
                        expected={"out": ref}, tol={"out": tol}))
    return out


def plugin(mod, device):
    """Plug the learner's kernel into pydl (see pydl/learn/plugins.py)."""
    from pydl.learn import plugins

    return plugins.conv2d(mod, device)
