"""Triton: batch-norm forward (training)."""
import torch

from pydl.learn.harness import Case

TITLE = "Batch-norm forward (training): per-channel statistics and normalisation"
TRACK = "triton"
FILE = "batch_norm_forward.py"
ENTRY = "batch_norm_forward"
TEACHES = "per-channel reductions over strided NCHW data, two-pass variance, folding the affine into scale/shift"
LEARNED = ("Batch norm is a reduction over (N, H, W) for every channel followed by a pointwise pass. In NCHW "
           "a channel is N runs of H*W contiguous values; one program per channel reads them in order. "
           "mean and invstd are saved because the backward pass needs exactly those.")
MUTANTS = {
    "unbiased variance": [("var = tl.sum(acc2, axis=0) / M", "var = tl.sum(acc2, axis=0) / (M - 1 + (M == 1))")],
    "padding in the variance": [("d = tl.where(m, x - mean, 0.0)", "d = x - mean")],
    "channel-major layout assumed": [("off = (e // HW) * C * HW + c * HW + e % HW", "off = c * M + e")],
}


def reference(x, w, b, eps):
    xd = x.double()
    mean = xd.mean((0, 2, 3))
    var = xd.var((0, 2, 3), correction=0)
    invstd = 1.0 / torch.sqrt(var + eps)
    y = (xd - mean[None, :, None, None]) * (invstd * w.double())[None, :, None, None] + b.double()[None, :, None, None]
    return y.float(), mean.float(), invstd.float()


def cases(device):
    out = []
    spec = [(0, (1, 2, 1, 1), 16), (1, (2, 3, 4, 4), 16), (2, (3, 4, 5, 7), 64), (3, (4, 2, 3, 3), 32),
            (4, (2, 5, 9, 9), 64)]
    for seed, shape, block in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g) * 2 + 0.5
        C = shape[1]
        w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
        eps = 1e-5
        y, mean, invstd = reference(x, w, b, eps)
        out.append(Case(f"x shape={shape}, BLOCK={block}, seed={seed}",
                        args={"x": x, "weight": w, "bias": b, "eps": eps},
                        outs={"y": (shape, torch.float32), "mean": ((C,), torch.float32),
                              "invstd": ((C,), torch.float32)}, params={"block": block},
                        expected={"y": y, "mean": mean, "invstd": invstd},
                        tol={"y": (1e-4, 1e-4), "mean": (1e-5, 1e-5), "invstd": (1e-4, 1e-4)}))
    return out


def plugin(mod, device):
    """Plug the learner's kernel into pydl (see pydl/learn/plugins.py)."""
    from pydl.learn import plugins

    return plugins.batch_norm(mod, device, "forward")
