"""The tooling around the kernels: build, doctor, bench runner, GPU check, README/CI consistency."""
import argparse
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from pydl import _build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pydl(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pydl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_import_compiles_nothing_and_skips_triton():
    code = ("import sys, pydl, torch; x = pydl.act_stats(torch.randn(5), backend='reference'); "
            "print('triton' in sys.modules, any(k.startswith('pydl_cpu') for k in dir(torch.ops)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["False", "False"]


def test_every_compiled_op_builds_and_links_for_cpu_and_cuda():
    """What CI relies on: every csrc/cpu/<op>.cpp and csrc/cuda/<op>.{cu,cpp} compiles AND links here.
    (CUDA is skipped only where the toolchain is missing; on CI's machine it is present.)"""
    for op in _build.compiled_ops("cpu"):
        res = _build.load(op, "cpu")
        assert res.ok, f"cpu {op}: {res.error}"
    ok, why = _build.cuda_toolchain()
    if not ok:
        if "cuda" in os.environ.get("PYDL_REQUIRE_BACKENDS", "") or os.environ.get("CI"):
            pytest.fail(f"CUDA toolchain unusable on CI: {why}")
        pytest.skip(why)
    assert _build.compiled_ops("cuda"), "no CUDA sources found"
    for op in _build.compiled_ops("cuda"):
        res = _build.load(op, "cuda")
        assert res.ok, f"cuda {op}: {res.error}"


def test_stale_build_lock_does_not_hang(tmp_path):
    """A build killed half-way may leave a lock file; the next process must not wait on it forever.
    (A private cache: a lock file planted in the shared one could stall other test workers' loads.)"""
    env = dict(os.environ, PYDL_CACHE_DIR=str(tmp_path))
    code = "from pydl import _build; print(_build.cache_dir())"
    cache = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=env).stdout.strip()
    build_dir = os.path.join(cache, _build.ext_name("act_stats", "cpu"))
    os.makedirs(build_dir)
    with open(os.path.join(build_dir, "lock"), "w") as f:
        f.write("left by a killed build")
    code = "from pydl import _build; r = _build.load('act_stats', 'cpu'); print(r.ok, r.error[-500:])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.strip().startswith("True"), out.stdout[-2000:] + out.stderr[-2000:]


def test_build_failure_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(tmp_path))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "broken.cpp").write_text("this is not C++\n")
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path / "cache"))
    res = _build.load("broken", "cpu")
    try:
        assert not res.ok and "broken" in res.error
    finally:
        _build._results.pop(("broken", "cpu"), None)


def test_doctor_prints_backends():
    r = _pydl("doctor")
    assert r.returncode == 0, r.stderr
    assert "act_stats" in r.stdout and "cpu@cpu" in r.stdout and "triton@cpu" in r.stdout
    assert "extension cache" in r.stdout
    info = __import__("pydl.cli", fromlist=["x"]).doctor_report()
    assert info["ops"]["act_stats"]["reference@cpu"][0] is True
    # Without a GPU nothing runs on cuda, however portable the backend: every @cuda row must say no, and why.
    if not torch.cuda.is_available():
        for op, rows in info["ops"].items():
            for key, (ok, why) in rows.items():
                if key.endswith("@cuda"):
                    assert not ok and "GPU" in why, (op, key, why)


def test_help_lists_every_subcommand_without_importing_them():
    """`pydl --help` shows each subcommand's help line, yet imports none of their modules (the demo's
    plotting stack, the benchmarks): a subcommand's module loads only when that subcommand runs."""
    from pydl import cli

    code = ("import sys; from pydl import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', *sorted(m for m, _ in cli._SUBCOMMANDS.values() if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "LOADED"
    listing = " ".join(r.stdout.split())  # argparse wraps help lines
    for name, (modname, help_line) in cli._SUBCOMMANDS.items():
        assert f"{name} {help_line}" in listing, (name, listing)
        # the line in cli.py is the one the module registers when its command runs
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        __import__(modname, fromlist=["register"]).register(sub)
        assert sub._choices_actions[0].help == help_line, modname
    # and a chosen subcommand still parses its own arguments
    r = _pydl("bench", "--help")
    assert r.returncode == 0 and "--dtype" in r.stdout, r.stderr


def test_aot_units_follow_the_only_switch(monkeypatch):
    monkeypatch.delenv("PYDL_BUILD_EXT_ONLY", raising=False)
    every = _build.aot_units()
    assert ("cpu", "act_stats") in every and ("cuda", "conv2d") in every
    assert {dev for dev, _ in every} == {"cpu", "cuda"}  # what setup.py can build; cuda_emu builds on use
    monkeypatch.setenv("PYDL_BUILD_EXT_ONLY", "cpu:act_stats")
    assert _build.aot_units() == [("cpu", "act_stats")]
    monkeypatch.setenv("PYDL_BUILD_EXT_ONLY", "cpu:nope")
    with pytest.raises(ValueError, match="PYDL_BUILD_EXT_ONLY.*cpu:act_stats"):
        _build.aot_units()


def test_cuda_objects_do_not_collide_with_their_cpp_twins():
    """Each CUDA op's .cu and .cpp share a stem; their objects must not share a path (ninja refuses two rules
    for one output, which is what broke `PYDL_BUILD_EXT=1 pip install`)."""
    import setuptools  # noqa: F401 - sets up distutils
    from distutils.ccompiler import new_compiler

    compiler = new_compiler()
    compiler.src_extensions = compiler.src_extensions + [".cu"]
    _build._object_names_by_language(compiler)
    srcs = _build.sources("act_stats", "cuda")
    objs = compiler.object_filenames(srcs, output_dir="/tmp/o")
    assert len(set(objs)) == len(srcs) == 2 and all(o.endswith(".o") for o in objs), objs


def test_bench_cases_are_well_formed():
    from pydl import bench

    ops = bench.available_ops()
    assert "act_stats" in ops
    for op in ops:
        for c in bench.collect_cases([op], quick=True, device="cpu"):
            assert c.op and c.variant and c.shape and c.dtype and c.backends
            fns = c.setup()
            assert callable(fns["torch"]) and callable(fns["pydl"])


def test_bench_report_writing_and_compare(tmp_path):
    from pydl import bench

    cm = bench.common()
    rows = [cm.Row("act_stats", "vs one x.sum()", "cpu", "4x4", "float32", "cpu", 2, 1.0, 0.1, 2.0, 0.1, 2.0,
                   gbps=10.0, pct_of_ceiling=25.0),
            cm.Row("conv2d", "forward", "cpu", "1x3x8x8", "float32", "cpu", 2, 4.0, 0.2, 2.0, 0.1, 0.5,
                   tflops=0.1, pct_of_ceiling=30.0)]
    env = {"date": "2026-01-01T00:00:00", "cpu": "test cpu", "threads": 2, "device": "cpu", "torch": "x",
           "triton": "y", "cuda": None, "pydl": "0", "git": "abc"}
    paths = bench.write_results(str(tmp_path / "a"), env, {"copy_gbps": 40.0}, rows)
    data = json.load(open(paths["json"]))
    assert data["rows"][0]["ratio"] == 2.0 and data["environment"]["git"] == "abc"
    md = open(paths["md"]).read()
    assert "| act_stats | vs one x.sum() | cpu | 4x4 | float32 | 1.000 ± 0.100 | 2.000 | 2.00x" in md
    assert os.path.getsize(paths["png"]) > 1000
    assert open(paths["csv"]).read().count("\n") == 3
    rows[0].median_ms = 0.5
    paths_b = bench.write_results(str(tmp_path / "b"), env, {"copy_gbps": 40.0}, rows)
    cmp = bench.compare(paths["json"], paths_b["json"])
    assert "| act_stats | vs one x.sum() | cpu | 4x4 | float32 | 1.000 | 0.500 | 0.50 |" in cmp


def test_bench_runs_end_to_end(tmp_path):
    r = _pydl("bench", "act_stats", "--quick", "--threads", "1", "--out", str(tmp_path), "--dtype", "float32")
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.load(open(tmp_path / "results.json"))
    assert data["rows"] and all(row["backend"] == "cpu" for row in data["rows"])  # interpreter never timed
    assert all(row["median_ms"] > 0 and row["torch_ms"] > 0 for row in data["rows"])
    assert data["environment"]["threads"] == 1


def test_selftest_plan_and_report(tmp_path):
    from pydl import selftest

    p = argparse.ArgumentParser()
    selftest.add_arguments(p)
    steps = selftest.plan(p.parse_args(["--gpu"]))
    names = [s["name"] for s in steps]
    assert names[:3] == ["doctor", "build", "tests"] and names[-1] == "bench"
    assert "--require-cuda" in steps[1]["cmd"] and "--quick" in steps[-1]["cmd"]
    assert sum(s["timeout"] for s in steps) > 0 and p.parse_args(["--gpu"]).budget < 600  # one device call
    assert "--quick" not in selftest.plan(p.parse_args(["--gpu", "--full"]))[-1]["cmd"]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.md").write_text("| op |\n|---|\n| act_stats |\n")
    results = [{"name": "doctor", "rc": 0, "seconds": 1.0, "log": "doctor.log", "tail": "GPU: fake"},
               {"name": "tests", "rc": 1, "seconds": 9.0, "log": "tests.log", "tail": "1 failed"},
               {"name": "bench", "rc": 125, "seconds": 0.0, "log": "-", "tail": "skipped: only 3 s left"}]
    path = selftest.write_report(str(tmp_path), {"date": "d", "gpu": "Fake GPU"}, results)
    md = open(path).read()
    assert "| doctor | ok |" in md and "| tests | FAILED (rc 1) |" in md and "act_stats" in md
    assert "| bench | skipped (time budget) |" in md  # a step that did not fit is never shown as passed
    assert json.load(open(tmp_path / "report.json"))["steps"][1]["rc"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_selftest_without_gpu_says_so():
    r = _pydl("selftest", "--gpu")
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_tests_are_collected_and_skipped_cleanly():
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/test_act_stats.py", "-m", "gpu", "-q", "-rs"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "skipped" in r.stdout and "needs a CUDA GPU" in r.stdout and "passed" not in r.stdout


def test_readme_commands_and_ci_agree():
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = readme.split("```")
    first = blocks[1].strip().splitlines()
    cmds = [l.split("#")[0].strip() for l in first if l.strip() and not l.strip().startswith(("#", "bash"))]
    assert len(cmds) == 2, cmds
    assert "pydl demo" in cmds[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert cmds[1] in ci, f"README test command {cmds[1]!r} not run by .ci/run"


def test_readme_names_the_quick_flag_and_ci_runs_everything():
    """The one flag that skips the slowest tests is documented, declared, used, and not used by CI."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    readme = open(os.path.join(ROOT, "README.md")).read()
    assert 'python -m pytest -q -m "not slow"' in readme
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        markers = tomllib.load(f)["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
    marked = [n for n in os.listdir(os.path.join(ROOT, "tests"))
              if n.startswith("test_") and "@pytest.mark.slow" in open(os.path.join(ROOT, "tests", n)).read()]
    assert {"test_demo.py", "test_aot_build.py"} <= set(marked), marked
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "not slow" not in ci


def test_lint_is_configured_and_ci_runs_it_first():
    """ruff's rules live in pyproject.toml and CI runs `ruff check .` before the build and the tests; every path
    the lint and type-check configuration names exists (a file moved without its exemption fails here)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)
    dev = cfg["project"]["optional-dependencies"]["dev"]
    assert {"ruff", "mypy", "pre-commit"} <= {d.split("=")[0].split(">")[0] for d in dev}, dev
    assert cfg["tool"]["ruff"]["line-length"] == 120
    for pattern in cfg["tool"]["ruff"]["lint"]["per-file-ignores"]:
        assert glob.glob(os.path.join(ROOT, pattern)), f"[tool.ruff.lint.per-file-ignores] {pattern!r} matches nothing"
    for path in cfg["tool"]["mypy"]["files"]:
        assert os.path.exists(os.path.join(ROOT, path)), f"[tool.mypy] files: {path!r} does not exist"
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    steps = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    lint = steps.index("ruff check .")
    assert lint < min(i for i, s in enumerate(steps) if s.startswith("pydl build")), steps
    assert lint < min(i for i, s in enumerate(steps) if "pytest" in s), steps
