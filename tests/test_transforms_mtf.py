"""Markov transition field: the definition as plain loops in numpy, pyts as an optional independent
implementation, shapes, no gradient, bad input."""
import sys

import numpy as np
import pytest
import torch

from pydl.transforms import bin_series, markov_transition_field


def np_mtf(x, n_bins, size, strategy):
    """Wang & Oates' MTF one series at a time: bins by np.percentile / linspace edges, transition counts in a
    loop over t, M[i, j] = W[q_i, q_j], then block means over the segments [floor(s*T/S), floor((s+1)*T/S))."""
    N, T = x.shape
    S = size or T
    out = np.empty((N, S, S))
    for n in range(N):
        s = x[n]
        if strategy == "quantile":
            edges = np.percentile(s, np.linspace(0, 100, n_bins + 1)[1:-1])
        else:
            edges = np.linspace(s.min(), s.max(), n_bins + 1)[1:-1]
        q = np.searchsorted(edges, s, side="left")
        w = np.zeros((n_bins, n_bins))
        for t in range(T - 1):
            w[q[t], q[t + 1]] += 1
        w /= np.maximum(w.sum(1, keepdims=True), 1)
        m = w[q[:, None], q[None, :]]
        for a in range(S):
            for b in range(S):
                out[n, a, b] = m[(a * T) // S:((a + 1) * T) // S, (b * T) // S:((b + 1) * T) // S].mean()
    return out


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
@pytest.mark.parametrize("T,size,n_bins", [(24, None, 4), (30, 7, 5), (17, 17, 2)])
def test_matches_numpy_loops(strategy, T, size, n_bins):
    x = np.random.default_rng(0).normal(size=(3, T)).cumsum(1)
    got = markov_transition_field(torch.tensor(x), n_bins=n_bins, size=size, strategy=strategy)
    S = size or T
    assert got.shape == (3, S, S)
    # bins and counts are exact; only the block means (sums of <= T^2 products in float64) round
    np.testing.assert_allclose(got.numpy(), np_mtf(x, n_bins, size, strategy), atol=1e-12, rtol=0)
    assert float(got.min()) >= 0 and float(got.max()) <= 1


def test_channels_and_no_gradient():
    x = torch.randn(2, 3, 20, requires_grad=True)
    m = markov_transition_field(x, size=10)
    assert m.shape == (2, 3, 10, 10) and not m.requires_grad
    torch.testing.assert_close(m[:, 1], markov_transition_field(x[:, 1], size=10))
    q = bin_series(torch.tensor([[0.0, 1, 2, 3, 4, 5, 6, 7]]), 4)
    assert q.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]       # quartile edges 1.75, 3.5, 5.25


@pytest.fixture(scope="module")
def pyts_image():
    """pyts with numba's JIT off (see tests/test_transforms_gaf.py: its import-time compile costs 30+ s)."""
    numba = pytest.importorskip("numba", reason="pyts (an optional test dependency) needs numba")
    if "pyts.image" in sys.modules:
        return sys.modules["pyts.image"]
    old = numba.config.DISABLE_JIT
    numba.config.DISABLE_JIT = True
    try:
        return pytest.importorskip("pyts.image", reason="pyts is an optional test dependency (pip install pyts): "
                                                        "an independent MarkovTransitionField")
    finally:
        numba.config.DISABLE_JIT = old


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
@pytest.mark.parametrize("size", [None, 6])
def test_matches_pyts(pyts_image, strategy, size):
    x = np.random.default_rng(2).normal(size=(3, 18)).cumsum(1)
    ref = pyts_image.MarkovTransitionField(image_size=size or 18, n_bins=4, strategy=strategy).fit_transform(x)
    got = markov_transition_field(torch.tensor(x), n_bins=4, size=size, strategy=strategy).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12, rtol=0)


def test_bad_arguments():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="strategy"):
        markov_transition_field(x, strategy="normal")
    with pytest.raises(ValueError, match="n_bins"):
        markov_transition_field(x, n_bins=1)
    with pytest.raises(ValueError, match="size must be between"):
        markov_transition_field(x, size=11)
    with pytest.raises(ValueError, match="at least 2 points"):
        markov_transition_field(torch.randn(2, 1))
    with pytest.raises(ValueError, match=r"\(N, T\) or \(N, C, T\)"):
        markov_transition_field(torch.randn(10))
