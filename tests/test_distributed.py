"""Beyond one process: SyncBatchNorm, DDP and sharded loss landscapes over 2 CPU processes (gloo on
127.0.0.1, bounded in time; each process destroys its process group)."""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pydl
from pydl import distributed as pd

sys.path.insert(0, os.path.dirname(__file__))
import _dist_workers as W  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


CONFIGS = [("none", "cpu", False), ("general_relu", "cpu", True), ("relu", "reference", False)]


def test_syncbn_equals_single_process_bn_on_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    dy = torch.randn(8, 3, 5, 5)
    per_rank = pd.run_local(W.syncbn_worker, 2, (x, dy, CONFIGS))
    for k, cfg in enumerate(CONFIGS):
        _check_syncbn(x, dy, [per_rank[0][k], per_rank[1][k]], *cfg)


def _check_syncbn(x, dy, res, act, backend, channels_last):
    # the single-process reference: pydl BatchNorm2d on the concatenated batch
    bn = pydl.nn.BatchNorm2d(3, act=act, leak=0.1, sub=0.4, backend=backend)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 3))
        bn.bias.copy_(torch.linspace(-0.2, 0.3, 3))
    xg = x.clone().requires_grad_(True)
    for _ in range(2):
        y = bn(xg)
        y.backward(dy)
    tol = dict(rtol=1e-5, atol=1e-5)  # fp32; the stats merge order differs from one process's
    torch.testing.assert_close(torch.cat([r["y"] for r in res]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in res]), xg.grad / 2, **tol)
    # weight/bias grads are local per rank (DDP sums/averages them): their sum is the whole batch's
    torch.testing.assert_close(res[0]["dw"] + res[1]["dw"], bn.weight.grad / 2, **tol)
    torch.testing.assert_close(res[0]["db"] + res[1]["db"], bn.bias.grad / 2, **tol)
    for r in res:
        torch.testing.assert_close(r["rm"], bn.running_mean, **tol)
        torch.testing.assert_close(r["rv"], bn.running_var, **tol)  # unbiased with the global count
        assert r["nbt"] == 2


def test_ddp_with_pydl_modules_matches_single_process():
    torch.manual_seed(0)
    x = torch.randn(8, 2, 7, 7)
    y = torch.randint(0, 3, (8,))
    res = pd.run_local(W.ddp_worker, 2, (x, y))
    model = W.make_model()  # same init; its BatchNorm sees the whole batch, as SyncBatchNorm does across ranks
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        for r in res:
            torch.testing.assert_close(r[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sharded_landscape_equals_single_process_bit_for_bit(tmp_path):
    res = pd.run_local(W.landscape_worker, 2, (str(tmp_path / "ck"), True))
    assert res[0]["done"].all() and res[1]["done"].all()
    assert np.array_equal(res[0]["loss"], res[0]["ref"]), "sharded != single process"
    assert np.array_equal(res[1]["loss"], res[0]["loss"]), "ranks disagree"
    assert res[0]["calls"] + res[1]["calls"] == 25 and abs(res[0]["calls"] - res[1]["calls"]) <= 1
    assert (tmp_path / "ck" / "landscape.npz").exists()


def test_sharded_landscape_over_groups_uses_each_groups_own_rank0(tmp_path):
    """4 processes, groups {0, 1} and {2, 3}: each group's scan equals the single-process one, and each
    group's checkpoint is written by its own rank 0 (global ranks 0 and 2)."""
    res = pd.run_local(W.landscape_groups_worker, 4, (str(tmp_path),), timeout_s=120.0)
    assert [r["group_rank"] for r in res] == [(0, 2), (1, 2), (0, 2), (1, 2)]
    for r in res:
        assert r["done"].all()
        assert np.array_equal(r["loss"], res[0]["ref"]), "a group's sharded scan != the single-process scan"
        assert "not a member of the group" in r["outsider"], r["outsider"]
    for g in (0, 1):
        calls = [res[2 * g]["calls"], res[2 * g + 1]["calls"]]
        assert sum(calls) == 25 and abs(calls[0] - calls[1]) <= 1, calls  # each group splits the whole grid
        assert (tmp_path / f"group{g}" / "landscape.npz").exists()


def test_sharded_landscape_resumes_a_partial_grid(tmp_path):
    ck = str(tmp_path / "ck")
    crash = W.CountingLoss(fail_after=7)
    with pytest.raises(KeyboardInterrupt):  # a single process dies after 7 points (checkpointing each)
        pd.sharded_landscape(W.tiny_net(), crash, W.landscape_data(), ndim=2, steps=5, seed=7, checkpoint_dir=ck,
                             checkpoint_every=1)
    res = pd.run_local(W.landscape_worker, 2, (ck, True))
    assert res[0]["calls"] + res[1]["calls"] == 25 - 7, "a restart must evaluate only the missing points"
    assert np.array_equal(res[0]["loss"], res[0]["ref"])


def test_helpers_without_a_process_group():
    assert pd.rank_and_world() == (0, 1)
    assert pd.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert pd.shard(list(range(7)), 1, 3) == [1, 4]
    assert pd.gather_to_rank0({"a": 1}) == [{"a": 1}]
    assert pd.init_from_env() is False or not os.environ.get("WORLD_SIZE")
    n, mean, m2 = pydl.nn.syncbatchnorm.merge_moments(torch.tensor([3.0, 0.0, 2.0]),
                                                     torch.tensor([[1.0], [9.0], [4.0]]),
                                                     torch.tensor([[2.0], [9.0], [0.5]]))
    data = torch.tensor([0.0, 1.0, 2.0, 3.5, 4.5])  # (3 values: mean 1, M2 2) + (2 values: mean 4, M2 0.5)
    assert float(n) == 5 and float(mean) == pytest.approx(float(data.mean()))
    assert float(m2) == pytest.approx(float(((data - data.mean()) ** 2).sum()))


def test_convert_maps_torch_syncbatchnorm_both_ways():
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.SyncBatchNorm(2))
    pydl.convert(m)
    assert type(m[1]) is pydl.nn.SyncBatchNorm
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    pydl.convert(m, to="torch")
    assert type(m[1]) is torch.nn.SyncBatchNorm
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    # without a process group it is plain (pydl) batch norm
    bn = pydl.nn.SyncBatchNorm(3)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(x, None, None, training=True))


def test_merge_moments_matches_one_pass_and_keeps_inf():
    """SyncBatchNorm's rank-order merge equals the statistics of the concatenated data, skips empty ranks,
    and gives a channel that holds +inf the mean torch gives it (inf), not the NaN a naive merge forms."""
    from pydl.nn.syncbatchnorm import merge_moments

    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 3, generator=g, dtype=torch.float64) * 5 + 2 for n in (3, 0, 5, 2)]
    counts = torch.tensor([float(p.shape[0]) for p in parts])
    means = torch.stack([p.mean(0) if len(p) else torch.zeros(3, dtype=torch.float64) for p in parts])
    m2s = torch.stack([((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(3, dtype=torch.float64)
                       for p in parts])
    n, mean, m2 = merge_moments(counts, means, m2s)
    allx = torch.cat(parts)
    assert n.item() == allx.shape[0]
    torch.testing.assert_close(mean, allx.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m2, ((allx - allx.mean(0)) ** 2).sum(0), rtol=1e-12, atol=1e-12)

    inf = float("inf")
    means = torch.tensor([[inf, 1.0], [2.0, 3.0]], dtype=torch.float64)
    n, mean, _ = merge_moments(torch.tensor([4.0, 4.0]), means, torch.zeros(2, 2, dtype=torch.float64))
    assert mean[0].item() == inf == torch.tensor([inf, 2.0]).mean().item()
    assert mean[1].item() == 2.0
