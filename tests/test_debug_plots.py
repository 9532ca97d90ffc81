"""Every plot renders headlessly to a non-empty PNG (decoded back and checked for content), returns a Figure,
and importing pydl.debug does not import matplotlib."""
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import pydl.debug as dbg


def png_ok(path, min_side=100):
    assert path.exists() and path.stat().st_size > 2000, path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert min(img.shape[:2]) >= min_side
    assert img[..., :3].std() > 0.02  # not a blank canvas


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    st = dbg.ActivationStats(model, preset="course2022", include_parameterless=True)
    for i in range(12):
        x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 4, (8,))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if i % 4 == 3:
            st.mark_epoch()
    st.remove()
    return model, st


@pytest.mark.parametrize("fn", ["plot_colorful_dimension", "plot_layer_stats", "plot_dead_chart"])
def test_stats_plots(trained, tmp_path, fn):
    _, st = trained
    path = tmp_path / f"{fn}.png"
    fig = getattr(st, fn)(path=path)
    assert isinstance(fig, Figure)
    png_ok(path)
    # the same plot from the saved NPZ
    npz = st.save_npz(tmp_path / "s.npz")
    fig2 = getattr(dbg, fn)(npz, path=tmp_path / "again.png")
    assert isinstance(fig2, Figure)
    png_ok(tmp_path / "again.png")


def test_colorful_dimension_image_is_log1p_hist(trained, tmp_path):
    _, st = trained
    fig = dbg.plot_colorful_dimension(st, layers=["0"])
    img = fig.axes[0].images[0]
    np.testing.assert_allclose(np.asarray(img.get_array()), np.log1p(st.data.hist[:, 0].T.astype(float)))
    assert img.origin == "lower" and img.get_cmap().name == "viridis"
    assert len(fig.axes[0].lines) == 3  # epoch separators after steps 4, 8, 12


def test_empty_stats_plot(tmp_path):
    st = dbg.ActivationStats(nn.Linear(2, 2))
    st.remove()
    fig = st.plot_colorful_dimension(path=tmp_path / "e.png")
    assert isinstance(fig, Figure) and (tmp_path / "e.png").stat().st_size > 0


def test_landscape_plots(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    batch = (torch.randn(16, 4), torch.randint(0, 3, (16,)))
    r1 = dbg.loss_landscape_1d(model, F.cross_entropy, batch, steps=9, show_progress=False)
    r2 = dbg.loss_landscape_2d(model, F.cross_entropy, batch, steps=7, show_progress=False)
    assert isinstance(dbg.plot_landscape_1d(r1, path=tmp_path / "1d.png"), Figure)
    png_ok(tmp_path / "1d.png")
    for kind in ("contour", "heatmap", "surface"):
        fig = dbg.plot_landscape_2d(r2, path=tmp_path / f"{kind}.png", kind=kind)
        assert isinstance(fig, Figure)
        png_ok(tmp_path / f"{kind}.png")
    # a partial grid still plots (as a heat map with gaps)
    part = dbg.LandscapeResult(r2.xs, r2.ys, r2.loss, r2.done & (np.arange(49).reshape(7, 7) % 2 == 0), r2.meta)
    dbg.plot_landscape_2d(part, path=tmp_path / "part.png")
    png_ok(tmp_path / "part.png")


def test_inspect_and_gradflow_plots(trained, tmp_path):
    model, _ = trained
    x = torch.randn(2, 3, 12, 12)
    assert isinstance(dbg.plot_feature_maps(model, model[1], x, path=tmp_path / "fm.png"), Figure)
    png_ok(tmp_path / "fm.png")
    dbg.plot_filters(model, path=tmp_path / "filters.png")
    png_ok(tmp_path / "filters.png")
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    dbg.plot_grad_flow(model, path=tmp_path / "gf.png")
    png_ok(tmp_path / "gf.png")
    model.zero_grad(set_to_none=True)
    rep = dbg.dead_units(model, x)
    rep.plot(path=tmp_path / "dead.png")
    png_ok(tmp_path / "dead.png")


def test_nested_path_is_created(trained, tmp_path):
    _, st = trained
    path = tmp_path / "a" / "b" / "cd.png"
    st.plot_colorful_dimension(path=path)
    png_ok(path)


def test_import_is_light():
    # relative to what torch and numpy import themselves: `import torch` pulls in tqdm when it is installed
    # (captum, a dev dependency, installs it), which is not pydl's doing
    code = ("import sys, torch, numpy; heavy = ('matplotlib', 'sklearn', 'tensorboard', 'tqdm'); "
            "before = {m for m in heavy if m in sys.modules}; import pydl.debug; "
            "bad = [m for m in heavy if m in sys.modules and m not in before]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
