"""Loss landscapes: filter normalisation and orthogonality as properties, determinism in the seed, values
equal a direct computation, the model restored bit-exact, partial grids completed by evaluating only the
missing points, interpolation, NPZ round trip."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pydl.debug import (LandscapeResult, evaluate_points, interpolate_models, interpolation_direction,
                        loss_landscape_1d, loss_landscape_2d, make_directions)


def net():
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Dropout(0.3),
        nn.Conv2d(5, 4, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.LayerNorm(6), nn.Linear(6, 3))


def data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def filters(t):
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


@pytest.mark.parametrize("include_bias_bn", [False, True])
def test_filter_normalisation_and_orthogonality(include_bias_bn):
    torch.manual_seed(0)
    model = net()
    d = make_directions(model, 2, seed=3, include_bias_bn=include_bias_bn)
    dot = 0.0
    n1 = n2 = 0.0
    for name, p in model.named_parameters():
        w = p.detach().double()
        assert d.dirs[0][name].shape == p.shape and d.dirs[0][name].dtype == p.dtype
        d1, d2 = d.dirs[0][name].double(), d.dirs[1][name].double()
        if p.dim() < 2 and not include_bias_bn:
            assert not d1.any() and not d2.any(), name  # biases and BN/LN parameters: zero direction
            continue
        # every filter of every direction has the norm of the same filter in the model
        for dk in (d1, d2):
            torch.testing.assert_close(filters(dk).norm(dim=1), filters(w).norm(dim=1), rtol=1e-6, atol=1e-7)
        # orthogonal filter by filter (hence globally), within float32 rounding of the stored directions
        live = filters(w).norm(dim=1) > 0  # a zero filter (BN bias at init) gets a zero direction
        assert not filters(d1)[~live].any() and not filters(d2)[~live].any()
        f1, f2 = filters(d1)[live], filters(d2)[live]
        cos = (f1 * f2).sum(1) / (f1.norm(dim=1) * f2.norm(dim=1))
        assert (cos.abs() < 1e-5).all(), name
        dot += float((d1 * d2).sum())
        n1 += float((d1 * d1).sum())
        n2 += float((d2 * d2).sum())
    assert abs(dot) / (n1 * n2) ** 0.5 < 1e-6
    # not trivially so: the two directions are different random vectors
    assert not torch.equal(d.dirs[0]["0.weight"], d.dirs[1]["0.weight"])


def test_directions_are_deterministic_in_the_seed():
    torch.manual_seed(0)
    model = net()
    a = make_directions(model, 2, seed=11)
    torch.manual_seed(123)  # the global RNG state must not matter
    b = make_directions(model, 2, seed=11)
    c = make_directions(model, 2, seed=12)
    for k in range(2):
        for name in a.dirs[k]:
            assert torch.equal(a.dirs[k][name], b.dirs[k][name])
    assert not torch.equal(a.dirs[0]["0.weight"], c.dirs[0]["0.weight"])
    # the 1D direction is the first 2D direction (the same draws, in the same order)
    one = make_directions(model, 1, seed=11)
    assert torch.equal(one.dirs[0]["4.weight"], a.dirs[0]["4.weight"])


def state(model):
    return ([t.detach().clone() for t in model.parameters()], [b.clone() for b in model.buffers()],
            [m.training for m in model.modules()])


def assert_same_state(model, s):
    ps, bs, flags = s
    for a, b in zip(model.parameters(), ps):
        assert torch.equal(a.detach(), b) and a.detach().view(-1).numpy().tobytes() == b.view(-1).numpy().tobytes()
    for a, b in zip(model.buffers(), bs):
        assert torch.equal(a, b)
    assert [m.training for m in model.modules()] == flags


def test_values_equal_direct_computation_and_model_restored():
    torch.manual_seed(0)
    model = net()
    model.train()
    model[1].eval()  # mixed modes come back as they were
    x, y = data()
    before = state(model)
    d = make_directions(model, 2, seed=5)
    res = loss_landscape_2d(model, F.cross_entropy, (x, y), steps=(3, 4), span=((-1, 1), (-0.5, 1)),
                            directions=d, show_progress=False)
    assert_same_state(model, before)
    assert res.shape == (3, 4) and res.complete
    # direct: build theta0 + a d1 + b d2 in a copy and evaluate in eval mode
    ref = net()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    for i, a in enumerate(res.xs):
        for j, b in enumerate(res.ys):
            with torch.no_grad():
                for (name, p), p0 in zip(ref.named_parameters(), before[0]):
                    p.copy_(p0 + a * d.dirs[0][name] + b * d.dirs[1][name])
                expect = F.cross_entropy(ref(x), y).item()
            assert res.loss[i, j] == pytest.approx(expect, rel=1e-5), (i, j)
    # the centre of a grid through 0 is the model itself (in eval mode)
    r1 = loss_landscape_1d(model, F.cross_entropy, (x, y), steps=5, show_progress=False)
    model.eval()
    with torch.no_grad():
        assert r1.loss[2] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_restored_after_an_exception():
    torch.manual_seed(0)
    model = net()
    before = state(model)
    calls = []

    def boom(out, y):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        loss_landscape_1d(model, boom, data(), steps=5, show_progress=False)
    assert_same_state(model, before)


def test_partial_grid_evaluates_only_missing_points(tmp_path):
    torch.manual_seed(0)
    model = net()
    x, y = data()
    calls = []

    def counting(out, t):
        calls.append(1)
        return F.cross_entropy(out, t)

    full = loss_landscape_2d(model, F.cross_entropy, (x, y), steps=4, seed=2, show_progress=False)
    d = make_directions(model, 2, seed=2)
    path = tmp_path / "grid.npz"
    # a "rank" computes half the points and saves
    part = LandscapeResult(full.xs, full.ys, meta=full.meta)
    evaluate_points(model, counting, (x, y), d, part, indices=range(0, 16, 2), show_progress=False,
                    checkpoint=str(path))
    assert len(calls) == 8 and part.done.sum() == 8
    loaded = LandscapeResult.load(path)
    assert loaded.same_grid(part) and loaded.done.sum() == 8
    np.testing.assert_array_equal(loaded.missing(), np.arange(1, 16, 2))
    # resuming through the public function evaluates only the 8 missing points
    calls.clear()
    done = loss_landscape_2d(model, counting, (x, y), steps=4, seed=2, path=str(path), show_progress=False)
    assert len(calls) == 8 and done.complete
    np.testing.assert_allclose(done.loss, full.loss, rtol=1e-6)
    # and a complete file costs nothing
    calls.clear()
    loss_landscape_2d(model, counting, (x, y), steps=4, seed=2, path=str(path), show_progress=False)
    assert calls == []
    # a different scan in the same file is refused rather than mixed
    with pytest.raises(ValueError, match="different scan"):
        loss_landscape_2d(model, counting, (x, y), steps=4, seed=3, path=str(path), show_progress=False)


def test_merge_shards():
    r = LandscapeResult(np.arange(3.0), np.arange(2.0))
    a, b = LandscapeResult(r.xs, r.ys), LandscapeResult(r.xs, r.ys)
    for i in range(6):
        (a if i % 2 else b).set(i, float(i))
    r.merge(a).merge(b)
    assert r.complete and r.loss.ravel().tolist() == [0, 1, 2, 3, 4, 5]
    assert r.coords(5) == (2.0, 1.0)
    with pytest.raises(ValueError, match="grids differ"):
        r.merge(LandscapeResult(np.arange(4.0)))


def test_batches_whole_loader_and_weighting():
    torch.manual_seed(0)
    model = net()
    x, y = data(10)
    loader = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]  # unequal last batch
    r_all = loss_landscape_1d(model, F.cross_entropy, loader, steps=3, batches=None, show_progress=False)
    r_one = loss_landscape_1d(model, F.cross_entropy, (x, y), steps=3, show_progress=False)
    np.testing.assert_allclose(r_all.loss, r_one.loss, rtol=1e-5)  # size-weighted mean over batches
    r_two = loss_landscape_1d(model, F.cross_entropy, loader, steps=3, batches=2, show_progress=False)
    r_ref = loss_landscape_1d(model, F.cross_entropy, (x[:8], y[:8]), steps=3, show_progress=False)
    np.testing.assert_allclose(r_two.loss, r_ref.loss, rtol=1e-5)
    assert r_two.meta["forward_passes_per_point"] == 2


def test_interpolation_between_two_models():
    torch.manual_seed(0)
    a, b = net(), net()
    x, y = data()
    with torch.no_grad():  # give b different BN statistics too
        b[1].running_mean.add_(0.3)
    before_a, before_b = state(a), state(b)
    r = interpolate_models(a, b, F.cross_entropy, (x, y), steps=5, span=(0.0, 1.0), show_progress=False)
    assert_same_state(a, before_a)
    assert_same_state(b, before_b)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert r.loss[0] == pytest.approx(F.cross_entropy(a(x), y).item(), rel=1e-5)
        assert r.loss[-1] == pytest.approx(F.cross_entropy(b(x), y).item(), rel=1e-5)
    d = interpolation_direction(a, b)
    assert "1.running_mean" in d.dirs[0] and "1.num_batches_tracked" not in d.dirs[0]
    assert r.meta["kind"] == "interpolation"


def test_npz_roundtrip_1d(tmp_path):
    torch.manual_seed(0)
    model = net()
    r = loss_landscape_1d(model, F.cross_entropy, data(), steps=4, path=str(tmp_path / "l.npz"),
                          show_progress=False)
    s = LandscapeResult.load(tmp_path / "l.npz")
    assert s.ys is None and s.ndim == 1 and s.complete and s.meta == r.meta
    np.testing.assert_array_equal(s.loss, r.loss)
    np.testing.assert_array_equal(s.xs, r.xs)


def test_bad_arguments():
    model = net()
    with pytest.raises(ValueError, match="n must be"):
        make_directions(model, 3)
    with pytest.raises(ValueError, match="two directions"):
        loss_landscape_2d(model, F.cross_entropy, data(), directions=make_directions(model, 1))
    with pytest.raises(ValueError, match="indices"):
        evaluate_points(model, F.cross_entropy, data(), make_directions(model, 1), LandscapeResult(np.arange(3.0)),
                        indices=[5], show_progress=False)


def test_progress_helper():
    """The landscape's bar (pydl.debug.progress, a tqdm wrapper: tqdm is a dependency) names its scan, counts
    to the end and finishes its line; disabled, it writes nothing."""
    import io

    from pydl.debug import progress

    out = io.StringIO()
    assert list(progress(range(5), desc="scan", file=out, min_interval=0)) == [0, 1, 2, 3, 4]
    text = out.getvalue()
    assert "scan" in text and "5/5" in text and text.endswith("\n")
    out = io.StringIO()
    assert list(progress(iter(range(3)), enable=False, file=out)) == [0, 1, 2] and out.getvalue() == ""
