"""pydl.integrations.fastai.ActivationStats inside a real fastai Learner.fit, on CPU.

One tiny fit (synthetic data, 2 epochs x 4 batches) carries, side by side on the same model and batches:
fastai's own ActivationStats(with_hist=True), pydl's callback (every batch and every 3rd batch) and the plain
pydl.debug.ActivationStats as a context manager. Every comparison below is on those same forwards.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

fastai_learner = pytest.importorskip("fastai.learner", reason="fastai not installed (pip install 'pydl[fastai]')")
from fastai.callback.hook import ActivationStats as FastaiActivationStats  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402
import fastai.callback.progress  # noqa: E402,F401  (Learner.no_bar)

from pydl.debug import ActivationStats as PlainActivationStats  # noqa: E402
from pydl.integrations.fastai import ActivationStats  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_BATCHES, EPOCHS = 4, 2


def _model():
    # conv and BN give signed outputs (where fastai's x <= eps and pydl's |x| <= eps differ), ReLU
    # non-negative ones, Linear a second signed layer; all four have parameters except ReLU
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    x = torch.randn(16 * N_BATCHES, 3, 8, 8) * 3  # wide enough that some values reach past several bins
    y = torch.randint(0, 4, (16 * N_BATCHES,))
    ds = list(zip(x, y))
    dls = DataLoaders(DataLoader(ds, bs=16, shuffle=False), DataLoader(ds[:16], bs=16))
    model = _model()
    theirs, ours = FastaiActivationStats(with_hist=True), ActivationStats(with_hist=True)
    ours3 = ActivationStats(every=3, near_zero="abs")
    learn = fastai_learner.Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=[theirs, ours, ours3])
    with PlainActivationStats(model) as plain, learn.no_bar(), learn.no_logging():
        learn.fit(EPOCHS, 1e-2)
    return dict(learn=learn, theirs=theirs, ours=ours, ours3=ours3, plain=plain)


def test_records_every_training_batch_and_only_those(run):
    ours, theirs = run["ours"], run["theirs"]
    assert len(theirs.stats) == len(ours.stats) == EPOCHS * N_BATCHES  # validation batches not recorded
    assert len(ours.stats[0]) == 3  # conv, bn, linear: fastai's default modules (leaves with parameters)
    assert ours.data.steps.tolist() == list(range(EPOCHS * N_BATCHES))
    assert ours.data.epoch_steps == [N_BATCHES, 2 * N_BATCHES]
    x = torch.randn(2, 3, 8, 8)
    n = len(ours.data)
    run["learn"].model.train()(x)
    assert len(ours.data) == n, "remove_end: no hook may record after the fit"


def test_equal_to_plain_pydl_recorder(run):
    a, b = run["ours"].data, run["plain"].data
    assert a.names == b.names
    np.testing.assert_array_equal(a.steps, b.steps)
    # the same act_stats kernel on the same tensors: bit for bit
    np.testing.assert_array_equal(a.fstats, b.fstats)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.hist, b.hist)


def test_every_keeps_the_matching_batches(run):
    a, b = run["ours"].data, run["ours3"].data
    assert b.steps.tolist() == [0, 3, 6]
    np.testing.assert_array_equal(b.hist, a.hist[[0, 3, 6]])
    np.testing.assert_array_equal(b.fstats, a.fstats[[0, 3, 6]])
    assert len(run["ours3"].stats) == 3
    # near_zero="abs": no extra pass, pydl's |x| <= eps in fastai's accessors, fastai's not available
    assert list(run["ours3"].layer_stats(0)[2]) == a.near_zero_frac[[0, 3, 6], 0].tolist()
    with pytest.raises(ValueError, match="near_zero='abs'"):
        run["ours3"].layer_stats(0, near_zero="fastai")


def test_histograms_equal_fastais_exactly(run):
    ours, theirs = run["ours"], run["theirs"]
    for j in range(3):
        assert ours.hist(j).shape == theirs.hist(j).shape == (40, EPOCHS * N_BATCHES)
        assert torch.equal(ours.hist(j), theirs.hist(j))
        for t in range(len(theirs.stats)):
            assert torch.equal(ours.stats[t][j]["hist"], theirs.stats[t][j]["hist"].cpu())
    assert ours.data.hist.sum() > 0 and ours.data.below.sum() > 0  # signed layers do fall below 0


def test_mean_std_near_zero_equal_fastais(run):
    ours, theirs, data = run["ours"], run["theirs"], run["ours"].data
    u = 2.0 ** -24  # float32 unit roundoff: both sides reduce float32 values in float32
    for j in range(3):
        om, os_, onz = ours.layer_stats(j)
        tm, ts, tnz = theirs.layer_stats(j)
        n = data.count[:, j]
        # A float32 sum of n terms in any blocked/tree order has error <= (depth) * u * sum|x|, depth at most
        # log2(n) tree levels plus a sequential block of up to 64 terms (vectorised lanes, kernel chunks) on
        # either side. Divided by n: |dmean| <= (log2 n + 64) u E|x| per side, and E|x| <= rms =
        # sqrt(mean^2 + var). std: M2 is such a sum of squares after centring, so rel. err. of var has the
        # same bound (plus the centring error, second order); std halves it; 2x for the two sides.
        depth = np.log2(n) + 64
        rms = np.sqrt(np.array(tm) ** 2 + np.array(ts) ** 2)
        assert np.all(np.abs(np.array(om) - np.array(tm)) <= 2 * depth * u * rms)
        assert np.all(np.abs(np.array(os_) - np.array(ts)) <= 2 * depth * u * rms)
        # near zero (fastai's x <= 0.05) is a count over numel, the same integers on both sides: exact
        assert list(onz) == list(tnz)
    # pydl's |x| <= eps differs on signed layers (conv, BN) and is still available
    conv_abs = ours.layer_stats(0, near_zero="abs")[2]
    assert list(conv_abs) == data.near_zero_frac[:, 0].tolist()
    assert all(a < b for a, b in zip(conv_abs, ours.layer_stats(0)[2]))


def test_plots(run, tmp_path):
    ours = run["ours"]
    ax = ours.color_dim(0)
    assert np.array_equal(ax.images[0].get_array(), ours.hist(0).numpy())
    axs = ours.plot_layer_stats(1, path=tmp_path / "ls.png")
    assert [a.get_title() for a in axs] == ["mean", "std", "% near zero"]
    np.testing.assert_array_equal(axs[2].lines[0].get_ydata(), list(ours.layer_stats(1)[2]))
    fig = ours.plot_dead(path=tmp_path / "dead.png")
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), ours.data.dead_fraction("hist")[:, 0])
    ours.plot_colorful_dimension(path=tmp_path / "cd.png")
    for f in ("ls.png", "dead.png", "cd.png"):
        assert (tmp_path / f).stat().st_size > 1000


def test_argument_checks():
    with pytest.raises(ValueError, match="every"):
        ActivationStats(every=0)
    with pytest.raises(ValueError, match="near_zero"):
        ActivationStats(near_zero="x<=eps")
    with pytest.raises(ValueError, match="near_zero must be"):
        ActivationStats()._near_zero("signed")
    with pytest.raises(RuntimeError, match="fit the Learner first"):
        ActivationStats().layer_stats(0)


def test_missing_fastai_names_the_extra(monkeypatch):
    # as if fastai were not installed: a None entry in sys.modules makes its import raise ImportError
    monkeypatch.setitem(sys.modules, "fastai.callback.core", None)
    monkeypatch.delitem(sys.modules, "pydl.integrations.fastai")
    with pytest.raises(ImportError, match=r"pip install 'pydl\[fastai\]'"):
        import pydl.integrations.fastai  # noqa: F401


def test_importing_pydl_imports_no_framework():
    # a fresh interpreter: this one has imported fastai already
    code = ("import sys, pydl, pydl.debug, pydl.integrations\n"
            "print(sorted(m for m in ('fastai', 'fastcore', 'lightning', 'pytorch_lightning', 'tensorboard')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_batch_recorder_fastai_near_zero_through_merges_and_the_memory_cap():
    # the recorder behind both callbacks, driven by hand: validation batches do not count, two forwards in
    # one batch merge, and the x <= eps counts follow the records that the memory cap keeps
    from pydl.integrations._recorder import BatchRecorder

    torch.manual_seed(1)
    lin = nn.Linear(4, 3)
    rec = BatchRecorder(lin, count_le_eps=True, max_records=4, chunk=1)
    ref = []
    for step in range(10):
        rec.begin(False)  # a validation batch in between: not a step
        lin(torch.randn(5, 4))
        rec.end()
        rec.begin(True)
        outs = [lin(torch.randn(5, 4)) for _ in range(1 + step % 2)]
        rec.end()
        o = torch.cat(outs).detach()
        ref.append((o <= 0.05).sum().item() / o.numel())
    data = rec.data
    assert rec.step == 10 and len(data) <= 4 and data.steps.tolist() == [0, 4, 8]  # decimated twice
    assert rec.le_eps_frac()[:, 0].tolist() == [ref[s] for s in data.steps.tolist()]
    assert data.count[:, 0].tolist() == [15 * (1 + s % 2) for s in data.steps.tolist()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_batch_recorder_x_le_eps_counts_as_torch_does(dtype):
    # float32/float64 CPU outputs are counted by numpy, other dtypes by torch: both must count what
    # torch's (x <= eps) counts, at the threshold itself (eps rounded to the dtype), around it and for
    # NaN, +-Inf and -0.0; the same recorder under a dispatch mode takes torch's path for every dtype
    from torch.utils._python_dispatch import TorchDispatchMode

    from pydl.integrations._recorder import BatchRecorder

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Id(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones((), dtype=dtype))

        def forward(self, x):
            return x * self.w

    eps = torch.tensor(0.05, dtype=dtype)
    up = torch.nextafter(eps, torch.tensor(1.0, dtype=dtype))
    down = torch.nextafter(eps, torch.tensor(0.0, dtype=dtype))
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -5.0, 7.0], dtype=dtype)
    x = torch.cat([eps.repeat(3), up.repeat(2), down.repeat(4), special, torch.randn(200).to(dtype) * 0.1])
    expected = int((x <= 0.05).sum())
    fracs = []
    for mode in (None, PassThrough):
        m = Id()
        rec = BatchRecorder(m, count_le_eps=True)
        rec.begin(True)
        if mode is None:
            m(x)
        else:
            with mode():
                m(x)
        rec.end()
        fracs.append(rec.le_eps_frac()[0, 0])
        rec.remove()
    assert fracs[0] == fracs[1] == expected / x.numel()
