"""Backend selection: names, precedence (argument > context > process default), errors that say why a
backend cannot run, and auto's fallback. act_stats is the op used: the smallest compiled unit."""
import os
import platform
import subprocess
import sys

import pytest
import torch

import pydl
from pydl import backends
from pydl.ops.act_stats import act_stats_reference


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


def test_backend_override_plugs_in_a_kernel():
    """Op.override swaps one backend's implementation inside a block (the course plugs learners' kernels in)."""
    op = backends.all_ops()["act_stats"]
    calls = []

    def mine(x, bins, lo, hi, eps, per_channel):
        calls.append(x.shape)
        return act_stats_reference(x, bins, lo, hi, eps, per_channel)

    with op.override("reference", mine):
        s = run(torch.randn(3, 4), "reference")
    assert calls == [torch.Size([3, 4])] and int(s.count) == 12
    run(torch.randn(3, 4), "reference")
    assert len(calls) == 1  # restored


# --------------------------------------------------------------------------------------------------
# environment variables
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def env_default(monkeypatch):
    """Let PYDL_BACKEND be read afresh, and put the process default back afterwards."""
    before = backends.BACKEND_SETTING.get()
    backends.BACKEND_SETTING.forget()
    yield
    backends.BACKEND_SETTING.set(before)
    backends.reset_caches()


def test_pydl_backend_bogus_names_the_variable_and_the_accepted_values(monkeypatch, env_default):
    monkeypatch.setenv("PYDL_BACKEND", "bogus")
    for call in (pydl.get_backend, lambda: run(torch.randn(8), None)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "PYDL_BACKEND='bogus'" in msg and all(n in msg for n in backends.NAMES), msg
    pydl.set_backend("reference")  # choosing in code overrides the environment
    assert pydl.get_backend() == "reference"


@pytest.mark.parametrize("value, want", [("", "auto"), ("   ", "auto"), ("cpu", "cpu"), (" triton ", "triton")])
def test_pydl_backend_empty_means_unset(monkeypatch, env_default, value, want):
    monkeypatch.setenv("PYDL_BACKEND", value)
    assert pydl.get_backend() == want


def test_a_bad_pydl_backend_does_not_stop_import_but_the_first_use():
    """Read in a fresh process, as a user's shell sets it: `import pydl` (and so `pydl doctor`) still works."""
    code = ("import pydl\nprint('imported')\n"
            "try:\n    pydl.get_backend()\nexcept ValueError as e:\n    print(e)\n")
    env = dict(os.environ, PYDL_BACKEND="fastest")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    lines = out.stdout.splitlines()
    assert lines[:1] == ["imported"] and "PYDL_BACKEND='fastest'" in lines[1], out.stdout + out.stderr[-1000:]


def test_build_env_variables_are_checked(monkeypatch):
    from pydl import _build

    monkeypatch.setenv("PYDL_NO_NATIVE", "maybe")
    with pytest.raises(ValueError, match="PYDL_NO_NATIVE='maybe'"):
        _build.cflags(jit=True)
    monkeypatch.setenv("PYDL_NO_NATIVE", "")
    assert ("-march=native" in _build.cflags(jit=True)) == (platform.machine() in ("x86_64", "AMD64"))
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("PYDL_CUDA_ARCHS", "")
    assert _build.cuda_arch_list().startswith(_build.DEFAULT_CUDA_ARCHS)
    monkeypatch.setenv("PYDL_CUDA_ARCHS", "hopper")
    with pytest.raises(ValueError, match="PYDL_CUDA_ARCHS='hopper'"):
        _build.cuda_arch_list()
    monkeypatch.setenv("PYDL_CACHE_DIR", "")  # empty: the default location, not the current directory
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert _build.cache_dir().startswith(os.path.join(os.path.expanduser("~"), ".cache", "pydl", "ext"))


def test_doctor_lists_invalid_environment_variables(monkeypatch):
    from pydl import doctor

    monkeypatch.setenv("PYDL_BACKEND", "bogus")
    monkeypatch.setenv("PYDL_FORCE_JIT", "1")
    monkeypatch.setenv("PYDL_BACKNED", "cpu")
    env = doctor.environment_report()
    assert env["PYDL_FORCE_JIT"] == (True, "True")
    assert env["PYDL_BACKNED"][0] is False and "misspelt" in env["PYDL_BACKNED"][1]
    ok, why = env["PYDL_BACKEND"]
    assert not ok and "PYDL_BACKEND='bogus'" in why
