"""Functions run in spawned gloo processes by tests/test_distributed.py (module level: spawn pickles them)."""
import torch
import torch.nn as tnn
import torch.nn.functional as F

import pydl
from pydl import distributed as pd


def syncbn_worker(rank, world, x_global, dy_global, configs):
    """One spawn for several configurations (spawning costs seconds): a list of results, one per config."""
    return [syncbn_one(rank, world, x_global, dy_global, *c) for c in configs]


def syncbn_one(rank, world, x_global, dy_global, act, backend, channels_last):
    torch.manual_seed(0)
    bn = pydl.nn.SyncBatchNorm(x_global.shape[1], act=act, leak=0.1, sub=0.4, backend=backend)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, x_global.shape[1]))
        bn.bias.copy_(torch.linspace(-0.2, 0.3, x_global.shape[1]))
    n = x_global.shape[0] // world
    x = x_global[rank * n:(rank + 1) * n].clone()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    outs = []
    for _step in range(2):  # two steps: running stats and num_batches_tracked move twice
        y = bn(x)
        y.backward(dy_global[rank * n:(rank + 1) * n])
        outs.append(y.detach())
    return {"y": outs[-1], "dx": x.grad / 2, "dw": bn.weight.grad / 2, "db": bn.bias.grad / 2,
            "rm": bn.running_mean.clone(), "rv": bn.running_var.clone(), "nbt": int(bn.num_batches_tracked)}


def make_model():
    torch.manual_seed(1)
    m = tnn.Sequential(tnn.Conv2d(2, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.Conv2d(4, 4, 3, stride=2),
                       tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(4, 3))
    return pydl.convert(m)


def ddp_worker(rank, world, x_global, y_global):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = pydl.nn.SyncBatchNorm.convert_sync_batchnorm(make_model())
    ddp = DDP(model)
    n = x_global.shape[0] // world
    loss = F.cross_entropy(ddp(x_global[rank * n:(rank + 1) * n]), y_global[rank * n:(rank + 1) * n])
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def tiny_net():
    torch.manual_seed(2)
    return tnn.Sequential(tnn.Conv2d(1, 3, 3), tnn.ReLU(), tnn.Flatten(), tnn.Linear(3 * 4 * 4, 2))


def landscape_data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 2, (16,), generator=g)


class CountingLoss:
    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, out, y):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        return F.cross_entropy(out, y)


def landscape_worker(rank, world, ckpt_dir, with_reference, group=None):
    from pydl.debug import loss_landscape_2d

    model, data, lf = tiny_net(), landscape_data(), CountingLoss()
    res = pd.sharded_landscape(model, lf, data, ndim=2, steps=5, seed=7, checkpoint_dir=ckpt_dir, group=group)
    out = {"loss": res.loss, "done": res.done, "calls": lf.calls}
    if with_reference and rank == 0:
        ref = loss_landscape_2d(tiny_net(), F.cross_entropy, data, steps=5, seed=7, show_progress=False)
        out["ref"] = ref.loss
    return out


def landscape_groups_worker(rank, world, ckpt_root):
    """Four ranks as two groups, {0, 1} and {2, 3}, each scanning the same landscape at once: the second group
    has no global rank 0, so its gather and broadcast must go to and come from *its* rank 0 (global 2)."""
    import os

    import torch.distributed as dist

    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group, in one order
    mine, other = groups[rank // 2], groups[1 - rank // 2]
    try:
        pd.rank_and_world(other)
        outsider = "no error"
    except ValueError as e:
        outsider = str(e)
    out = landscape_worker(rank, world, os.path.join(ckpt_root, f"group{rank // 2}"), rank == 0, group=mine)
    out.update(group_rank=pd.rank_and_world(mine), outsider=outsider)
    return out
