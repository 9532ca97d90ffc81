"""Backend selection: names, precedence (argument > context > process default), errors that say why a
backend cannot run, and auto's fallback. act_stats is the op used: the smallest compiled unit."""
import pytest
import torch

import pydl
from pydl import backends


def run(x, backend, **kw):
    args = dict(bins=40, lo=0.0, hi=10.0, eps=0.05, per_channel=False)
    args.update(kw)
    return pydl.act_stats(x, backend=backend, **args)


# --------------------------------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------------------------------

def test_backend_selection_precedence():
    x = torch.randn(10)
    assert pydl.get_backend() == "auto"
    with pydl.backend("reference"):
        assert pydl.get_backend() == "reference"
        with pydl.backend("triton"):
            assert pydl.get_backend() == "triton"
        assert pydl.get_backend() == "reference"
    pydl.set_backend("reference")
    try:
        assert pydl.get_backend() == "reference"
        run(x, None)  # uses the process default
    finally:
        pydl.set_backend("auto")
    with pytest.raises(ValueError, match="backend must be one of"):
        pydl.set_backend("fastest")


def test_unusable_backend_raises_with_reason():
    with pytest.raises(RuntimeError, match="cuda tensors, not cpu tensors"):
        run(torch.randn(4), "cuda")


def test_auto_falls_back_with_one_warning(monkeypatch):
    """If the C++ build fails, auto uses the next backend and warns once -- never silently."""
    from pydl import _build

    monkeypatch.setitem(_build._results, ("act_stats", "cpu"), _build.LoadResult(False, error="compiler exploded"))
    backends.reset_caches()
    try:
        with pytest.warns(RuntimeWarning, match="compiler exploded"):
            s = run(torch.randn(100), "auto")
        assert int(s.count) == 100
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(torch.randn(100), "auto")  # second call: no second warning
        with pytest.raises(RuntimeError, match="compiler exploded"):
            run(torch.randn(100), "cpu")
    finally:
        monkeypatch.undo()
        backends.reset_caches()
