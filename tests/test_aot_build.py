"""The ahead-of-time build: a wheel with prebuilt extensions (``PYDL_BUILD_EXT=1``) installs and runs where
there is no compiler at all. Slow (one unit compiled through setuptools, a wheel built and installed:
~1 min of CPU), so marked ``slow``; CI runs it, ``pytest -m "not slow"`` skips it.

Only the smallest unit is built (PYDL_BUILD_EXT_ONLY=cpu:act_stats): what is under test is the packaging
path -- setup.py, the wheel's contents, the loader finding the prebuilt library -- which is the same for every
unit; that every unit compiles is test_tooling's job.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_copy(dest):
    """The checkout's tracked files only: no build outputs, caches or an in-place pydl/_ext of the developer's
    that could end up in the wheel and make the test pass without building anything."""
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the sources from build outputs")
    for rel in r.stdout.decode().split("\0"):
        if rel and os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))


@pytest.mark.slow
def test_wheel_with_prebuilt_extension_runs_without_a_compiler(tmp_path):
    src, dist, target, cache = (tmp_path / d for d in ("src", "dist", "site", "cache"))
    _tracked_copy(src)
    env = dict(os.environ, PYDL_BUILD_EXT="1", PYDL_BUILD_EXT_ONLY="cpu:act_stats", MAX_JOBS="2")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(dist),
                        str(src)], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(dist.glob("pydl-*.whl"))
    assert len(wheels) == 1, wheels
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheels[0])],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (target / "pydl" / "_ext" / "pydl_cpu_act_stats.so").is_file()

    # A machine without a compiler: CXX names nothing, no CUDA on PATH, an empty cache. Any build attempt
    # fails (and `auto` would hide that by falling back), so the cpu backend is asked for by name and the
    # load is checked to come from the wheel.
    code = textwrap.dedent('''
        import torch, pydl
        from pydl import _build
        assert pydl.__file__.startswith(TARGET), pydl.__file__  # the installed wheel, not the checkout
        x = torch.randn(1000)
        got = pydl.act_stats(x, bins=10, lo=-3.0, hi=3.0, backend="cpu")
        want = pydl.act_stats(x, bins=10, lo=-3.0, hi=3.0, backend="reference")
        assert torch.equal(got.hist, want.hist) and int(got.count) == 1000, (got, want)
        res = _build.status("act_stats", "cpu")
        assert res.ok and res.how == "aot" and res.path.startswith(TARGET), res
        assert not _build.cpu_toolchain()[0]  # really no compiler here
        print("OK")
    ''')
    run_env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": "/usr/bin:/bin", "CXX": "/nonexistent",
               "PYTHONPATH": str(target), "PYDL_CACHE_DIR": str(cache), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", f"TARGET = {str(target)!r}\n" + code], capture_output=True,
                       text=True, env=run_env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-2000:] + r.stderr[-3000:]
    assert not any(cache.rglob("*.so")), "nothing may be compiled where the wheel brings the library"

    # The editable install's way (`PYDL_BUILD_EXT=1 pip install --no-build-isolation -e .`): build in place,
    # into the checkout's pydl/_ext/ -- a folder git ignores, so absent in a fresh clone. Reuses the wheel
    # build's objects (a copy and a link, not a compile).
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, capture_output=True,
                       text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (src / "pydl" / "_ext" / "pydl_cpu_act_stats.so").is_file()
    r = subprocess.run([sys.executable, "-c", f"TARGET = {str(src)!r}\n" + code], capture_output=True, text=True,
                       env=dict(run_env, PYTHONPATH=str(src)), cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-2000:] + r.stderr[-3000:]
