"""Training the image classifier: Adam with a one-cycle schedule, curves per step and per epoch; the
validation pass; the warm-up that keeps kernel compilation out of the clock."""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F

from ..debug.progress import progress


def train(model, xtr, ytr, xva, yva, epochs: int, bs: int = 32, lr: float = 1e-2, seed: int = 0,
          stats=None, quiet: bool = False) -> dict[str, list]:
    """Adam + one-cycle schedule. Returns per-step and per-epoch curves."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(xtr) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    hist = {"step_loss": [], "step_acc": [], "lr": [], "epoch_valid_loss": [], "epoch_valid_acc": [],
            "epoch_train_loss": [], "epoch_seconds": []}
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=g)
        tot = 0.0
        for i in progress(range(steps_per_epoch), desc=f"epoch {ep + 1}/{epochs}", enable=not quiet):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = xtr[idx], ytr[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc = (out.argmax(1) == yb).float().mean().item()
            hist["step_loss"].append(loss.item())
            hist["step_acc"].append(acc)
            hist["lr"].append(sched.get_last_lr()[0])
            tot += loss.item()
        if stats is not None:
            stats.mark_epoch()  # an epoch separator in the colorful dimension
        vl, va = evaluate(model, xva, yva)
        hist["epoch_valid_loss"].append(vl)
        hist["epoch_valid_acc"].append(va)
        hist["epoch_train_loss"].append(tot / steps_per_epoch)
        hist["epoch_seconds"].append(time.time() - t0)
        if not quiet:
            print(f"epoch {ep + 1}: train loss {tot / steps_per_epoch:.3f}  valid loss {vl:.3f}  valid acc {va:.3f}",
                  flush=True)
    return hist


@torch.no_grad()
def evaluate(model, x, y, bs: int = 256) -> tuple[float, float]:
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), bs):
        out = model(x[i:i + bs])
        loss += F.cross_entropy(out, y[i:i + bs], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + bs]).sum().item()
    model.train(was)
    return loss / len(x), correct / len(x)


def warm_up(model, x, say) -> None:
    """One forward and backward on a copy of the model before the clock starts: the first call of each
    compiled or Triton backend builds its kernels (tens of seconds, announced by the build itself), and a
    progress bar that counted that would promise hours for a minute's training."""
    say("warming up the kernels (the first run compiles them) ...")
    twin = copy.deepcopy(model).train()  # a copy: the real model's weights and BatchNorm statistics stay untouched
    out = twin(x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()  # an RNN returns (output, state)
