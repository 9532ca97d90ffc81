"""Triton: batch-norm backward."""
import torch
import torch.nn.functional as F

from pydl.learn.harness import Case

TITLE = "Batch-norm backward: two reductions, then the input gradient"
TRACK = "triton"
FILE = "batch_norm_backward.py"
ENTRY = "batch_norm_backward"
TEACHES = "deriving a backward pass: dbias, dweight as reductions, dx through the batch statistics"
LEARNED = ("Every output of batch norm depends on every input of its channel through mean and var, so dx has "
           "two correction terms -- the projections of dy onto 1 and onto xhat. They are exactly dbias/M and "
           "dweight/M: the backward is two reductions plus one pointwise pass.")
MUTANTS = {
    "no statistics terms": [("dx = k * (dy - sum_dy / M - xhat * (sum_dyx / M))", "dx = k * dy")],
    "dweight without xhat": [("acc_dyx += dy * xhat", "acc_dyx += dy * x")],
    "unmasked store": [("tl.store(dx_ptr + off, dx, mask=m)", "tl.store(dx_ptr + off, dx)")],
}


def reference(x, dy, w, eps):
    xd = x.double().requires_grad_()
    wd = w.double().requires_grad_()
    bd = torch.zeros_like(wd, requires_grad=True)
    y = F.batch_norm(xd, None, None, wd, bd, training=True, eps=eps)
    dx, dw, db = torch.autograd.grad(y, (xd, wd, bd), dy.double())
    mean = xd.detach().mean((0, 2, 3))
    invstd = 1.0 / torch.sqrt(xd.detach().var((0, 2, 3), correction=0) + eps)
    return dx.float(), dw.float(), db.float(), mean.float(), invstd.float()


def cases(device):
    out = []
    spec = [(0, (2, 1, 1, 1), 16), (1, (2, 3, 4, 4), 16), (2, (3, 4, 5, 7), 64), (3, (4, 2, 3, 3), 32),
            (4, (2, 5, 9, 9), 64)]
    for seed, shape, block in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g) * 2 + 0.5
        dy = torch.randn(shape, generator=g)
        C = shape[1]
        w = torch.randn(C, generator=g)
        dx, dw, db, mean, invstd = reference(x, dy, w, 1e-5)
        out.append(Case(f"x shape={shape}, BLOCK={block}, seed={seed}",
                        args={"x": x, "dy": dy, "mean": mean, "invstd": invstd, "weight": w},
                        outs={"dx": (shape, torch.float32), "dweight": ((C,), torch.float32),
                              "dbias": ((C,), torch.float32)}, params={"block": block},
                        expected={"dx": dx, "dweight": dw, "dbias": db},
                        tol={"dx": (1e-4, 1e-3), "dweight": (1e-4, 1e-4), "dbias": (1e-4, 1e-4)}))
    return out


def plugin(mod, device):
    """Plug the learner's kernel into pydl (see pydl/learn/plugins.py)."""
    from pydl.learn import plugins

    return plugins.batch_norm(mod, device, "backward")
