"""Gramian angular fields and PAA: the paper's formulas written directly in numpy (arccos, cos of sums, sin of
differences), pyts as an optional independent implementation, gradcheck / gradgradcheck including the
series' extremes, shapes, the module, bad input."""
import sys

import numpy as np
import pytest
import torch

from pydl.transforms import GramianAngularField, gadf, gaf, gasf, paa, rescale, segments


def np_paa(x, size):
    """Segment means in a loop over the segments [floor(s*T/size), floor((s+1)*T/size))."""
    T = x.shape[-1]
    out = np.empty(x.shape[:-1] + (size,))
    for s in range(size):
        a, b = (s * T) // size, ((s + 1) * T) // size
        out[..., s] = x[..., a:b].mean(-1)
    return out


def np_gaf(x, method, size=None, lo=-1.0, hi=1.0):
    """Wang & Oates 2015, term by term: rescale to [lo, hi], phi = arccos, cos(phi_i + phi_j) / sin(phi_i - phi_j)."""
    if size is not None:
        x = np_paa(x, size)
    mn, mx = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    if lo == -1.0 and hi == 1.0:
        xt = ((x - mx) + (x - mn)) / (mx - mn)          # the paper's own formula
    else:
        xt = lo + (hi - lo) * (x - mn) / (mx - mn)
    phi = np.arccos(np.clip(xt, -1, 1))
    pi, pj = phi[..., :, None], phi[..., None, :]
    return np.cos(pi + pj) if method == "summation" else np.sin(pi - pj)


@pytest.mark.parametrize("method", ["summation", "difference"])
@pytest.mark.parametrize("shape,size,rng", [((3, 17), None, (-1, 1)), ((2, 3, 30), 7, (-1, 1)),
                                            ((4, 23), 23, (0, 1)), ((2, 1, 9), 1, (-0.5, 0.75))])
def test_matches_numpy_formulas(method, shape, size, rng):
    x = np.random.default_rng(0).normal(size=shape)
    got = gaf(torch.tensor(x), method, size=size, sample_range=rng)
    S = size or shape[-1]
    assert got.shape == shape[:-1] + (S, S) and got.dtype == torch.float64
    if S == 1:  # a single point is its own min and max: a constant series, mapped to the range's bottom
        c = rng[0]
        s = np.sqrt(1 - c * c)
        expect = c * c - s * s if method == "summation" else 0.0
        np.testing.assert_allclose(got.numpy(), np.full(got.shape, expect), atol=1e-15)
        return
    ref = np_gaf(x, method, size, *rng)
    # float64 throughout; arccos then cos/sin vs the algebraic form: error ~ eps / sqrt(1 - x^2) at worst,
    # which the clipped extremes (x = +-1 exactly, where both forms are exact) never reach
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-7, rtol=0)
    # the diagonal keeps the series: GASF cos(2 phi) = 2 x~^2 - 1; GADF sin(0) = 0
    d = torch.diagonal(got, dim1=-2, dim2=-1)
    if method == "difference":
        assert torch.equal(d, torch.zeros_like(d))
    else:
        xt = rescale(paa(torch.tensor(x), S), rng)
        torch.testing.assert_close(d, 2 * xt ** 2 - 1, atol=1e-12, rtol=0)


def test_paa_segments():
    start, end = segments(10, 4)              # linspace(0, 10, 5) = 0, 2.5, 5, 7.5, 10 -> 0, 2, 5, 7, 10
    assert start.tolist() == [0, 2, 5, 7] and end.tolist() == [2, 5, 7, 10]
    x = torch.arange(10.0)
    torch.testing.assert_close(paa(x, 4), torch.tensor([0.5, 3.0, 5.5, 8.0]))
    y = torch.randn(2, 3, 31, dtype=torch.float64)
    torch.testing.assert_close(paa(y, 6), torch.tensor(np_paa(y.numpy(), 6)), atol=1e-14, rtol=0)
    assert paa(y, 31) is y


@pytest.fixture(scope="module")
def pyts_image():
    """pyts, with numba's JIT off: pyts compiles its kernels with numba on import, which costs 30+ s of CPU
    (minutes on a loaded 2-core machine); as plain Python on these tiny arrays they run in milliseconds. The
    flag is read when the functions are decorated, so it must be set before pyts is first imported."""
    numba = pytest.importorskip("numba", reason="pyts (an optional test dependency) needs numba")
    if "pyts.image" not in sys.modules:
        old = numba.config.DISABLE_JIT
        numba.config.DISABLE_JIT = True
        try:
            mod = pytest.importorskip("pyts.image", reason="pyts is an optional test dependency (pip install pyts):"
                                                           " an independent GramianAngularField")
        finally:
            numba.config.DISABLE_JIT = old
        return mod
    return sys.modules["pyts.image"]


@pytest.mark.parametrize("method", ["summation", "difference"])
@pytest.mark.parametrize("size,rng", [(None, (-1, 1)), (5, (-1, 1)), (None, (0, 1))])
def test_matches_pyts(pyts_image, method, size, rng):
    x = np.random.default_rng(1).normal(size=(4, 20)).cumsum(1)
    ref = pyts_image.GramianAngularField(image_size=size or 20, method=method, sample_range=rng).fit_transform(x)
    got = gaf(torch.tensor(x), method, size=size, sample_range=rng).numpy()
    # the same algebra in float64, except at each series' max: pyts rescales with scikit-learn's
    # x * scale + offset, which can land one ulp inside 1 there, and sqrt(1 - x^2) turns that ulp into
    # sqrt(2 * 2^-52) ~ 2e-8 (here the max maps to exactly 1)
    np.testing.assert_allclose(got, ref, atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", ["summation", "difference"])
@pytest.mark.parametrize("size,rng", [(None, (-1, 1)), (4, (-1, 1)), (None, (-0.8, 0.9))])
def test_gradcheck_and_gradgradcheck(method, size, rng):
    # distinct values (no ties for min/max, no segment means that tie) in float64; the extremes are included:
    # their derivative is 0, not inf * 0 = nan
    x = (torch.randperm(18, generator=torch.Generator().manual_seed(0)).double() / 7).reshape(2, 9)
    x = x + 0.01 * torch.randn(2, 9, dtype=torch.float64)
    x.requires_grad_(True)
    f = lambda t: gaf(t, method, size=size, sample_range=rng)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-5)
    g = torch.autograd.grad(f(x).square().sum(), x)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_constant_series_and_no_rescale():
    x = torch.full((2, 6), 3.0)
    torch.testing.assert_close(gasf(x), torch.ones(2, 6, 6))        # x~ = -1: phi = pi, cos(2 pi) = 1
    torch.testing.assert_close(gadf(x), torch.zeros(2, 6, 6))
    # a constant series is where the min-max rescaling jumps; its gradient is finite (0), never nan
    c = torch.full((1, 5), 2.0, requires_grad=True)
    (g,) = torch.autograd.grad(gasf(c).sum(), c)
    assert torch.equal(g, torch.zeros_like(g))
    u = torch.tanh(torch.randn(3, 8, dtype=torch.float64)) * 0.9
    np.testing.assert_allclose(gaf(u, "summation", sample_range=None).numpy(),
                               np.cos(np.arccos(u.numpy())[:, :, None] + np.arccos(u.numpy())[:, None, :]),
                               atol=1e-12)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        gaf(u * 2, sample_range=None)


def test_module_stacks_methods():
    x = torch.randn(5, 3, 40)
    m = GramianAngularField(("summation", "difference"), size=16)
    y = m(x)
    assert y.shape == (5, 6, 16, 16)
    torch.testing.assert_close(y[:, :3], gasf(x, 16))
    torch.testing.assert_close(y[:, 3:], gadf(x, 16))
    y2 = GramianAngularField("difference", size=8)(torch.randn(5, 40))
    assert y2.shape == (5, 1, 8, 8)
    assert "size=16" in repr(m) and not list(m.parameters())


def test_bad_arguments():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="method"):
        gaf(x, "product")
    with pytest.raises(ValueError, match=r"\(N, T\) or \(N, C, T\)"):
        gaf(torch.randn(10))
    with pytest.raises(ValueError, match=r"\(N, T\) or \(N, C, T\)"):
        gaf(torch.arange(20).reshape(2, 10))
    with pytest.raises(ValueError, match="size must be between"):
        gaf(x, size=11)
    with pytest.raises(ValueError, match="size must be between"):
        gaf(x, size=0)
    with pytest.raises(TypeError, match="size must be an int"):
        gaf(x, size=2.5)
    with pytest.raises(ValueError, match="sample_range"):
        gaf(x, sample_range=(0, 2))
    with pytest.raises(ValueError, match="sample_range"):
        gaf(x, sample_range=(1, 0))
    with pytest.raises(TypeError, match="sample_range"):
        gaf(x, sample_range="wide")
    with pytest.raises(TypeError, match="paa: x"):
        paa(torch.arange(5), 2)
    with pytest.raises(ValueError, match="methods"):
        GramianAngularField(("summation", "sum"))


def test_gaf_demo_quick(tmp_path):
    """`pydl demo gaf --quick`: a pydl CNN learns the synthetic waves from their GASF+GADF images."""
    pytest.importorskip("matplotlib")
    import json
    import os

    from pydl.demo import WAVES, run_gaf, synthetic_series

    x, y = synthetic_series(8, length=30, seed=3)
    assert x.shape == (8, 30) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    out = str(tmp_path / "gaf")
    res = run_gaf(out, quick=True, quiet=True)
    assert res["valid_acc"] > 0.5, res["valid_acc"]   # chance is 0.25; three quick epochs reach ~0.7
    html = open(res["report"]).read()
    assert "Validation accuracy" in html and "gaf_examples.png" in html and "training_curves.png" in html
    for name in ("gaf_examples.png", "training_curves.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["classes"] == list(WAVES) and summary["valid_acc"] == res["valid_acc"]
