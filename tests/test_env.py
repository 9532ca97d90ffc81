"""pydl/_env.py: every PYDL_* variable is parsed in one place; empty means unset, and a value it does not
understand names the variable and what it accepts (or warns, for switches read at import)."""
import os

import pytest

from pydl import _env


@pytest.mark.parametrize("value, want", [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False),
                                         ("", True), (None, True)])  # empty or absent: the default (True)
def test_flag(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("PYDL_X", raising=False)
    else:
        monkeypatch.setenv("PYDL_X", value)
    assert _env.flag("PYDL_X", default=True) is want


def test_flag_that_is_not_a_switch(monkeypatch):
    monkeypatch.setenv("PYDL_X", "2")
    with pytest.raises(ValueError, match=r"PYDL_X='2' is not a yes/no switch: use one of 1, true"):
        _env.flag("PYDL_X")
    with pytest.warns(RuntimeWarning, match=r"PYDL_X='2' is not a yes/no switch.*using the default"):
        assert _env.flag("PYDL_X", default=True, strict=False) is True


def test_cuda_archs(monkeypatch):
    monkeypatch.setenv("PYDL_X", "8.0 9.0+PTX;10.0a")
    assert _env.cuda_archs("PYDL_X") == "8.0;9.0+PTX;10.0a"
    monkeypatch.setenv("PYDL_X", "8.0;sm_90")
    with pytest.raises(ValueError, match=r"PYDL_X='8.0;sm_90': 'sm_90' is not a CUDA architecture"):
        _env.cuda_archs("PYDL_X")


def test_required_backends(monkeypatch):
    monkeypatch.setenv("PYDL_X", "cpu, triton@cuda,")
    assert _env.required_backends("PYDL_X") == ["cpu", "triton@cuda"]
    monkeypatch.setenv("PYDL_X", "cpu,trition")
    with pytest.raises(ValueError, match=r"'trition' not understood; each comma-separated item must be one of"):
        _env.required_backends("PYDL_X")


def test_positive_int_and_path(monkeypatch):
    monkeypatch.setenv("PYDL_X", "0")
    with pytest.raises(ValueError, match=r"PYDL_X='0' must be a whole number >= 1"):
        _env.positive_int("PYDL_X", 4)
    monkeypatch.setenv("PYDL_X", "~/c")
    assert _env.path("PYDL_X") == os.path.expanduser("~/c")
