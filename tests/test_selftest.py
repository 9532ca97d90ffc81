"""The GPU check's plumbing, without a GPU: its plan fits the budget, the sanitizer smoke runs the emulated
suite's cases (here a fake cases module on the CPU), and the report ends as one archive printed last."""
import argparse
import os
import subprocess
import sys
import tarfile

import pytest
import torch

from pydl import selftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "scripts", "sanitize_smoke.py")


def _args(*argv):
    p = argparse.ArgumentParser()
    selftest.add_arguments(p)
    return p.parse_args(["--gpu", *argv])


def test_plan_fits_the_budget_and_sanitizes_with_three_tools(monkeypatch):
    monkeypatch.setattr(selftest.shutil, "which", lambda name: "/fake/bin/" + name)
    steps = selftest.plan(_args())
    names = [s["name"] for s in steps]
    assert names == ["doctor", "build", "tests", "sanitize-memcheck", "sanitize-racecheck", "sanitize-synccheck",
                     "bench"]
    # every step gets its whole limit whatever the others take within theirs
    assert sum(s["timeout"] for s in steps) <= _args().budget < 600
    tests = steps[2]["cmd"]
    assert tests[tests.index("-q") + 1:tests.index("-q") + 4] == ["-rs", "-m", "gpu"], "only what needs a GPU"
    for s in steps[3:6]:
        tool = s["name"].split("-")[1]
        assert s["cmd"][:3] == ["/fake/bin/compute-sanitizer", "--tool", tool]
        assert SMOKE in s["cmd"] and s["cmd"][-4:] == ["--device", "cuda", "--backend", "cuda"]
        assert s["skip_rc"] == selftest.SKIPPED_NO_CASES
    assert "sanitize-memcheck" not in [s["name"] for s in selftest.plan(_args("--no-sanitizer"))]


FAKE_CASES = '''
import torch, pydl

def _act_stats(device, backend):
    x = torch.randn(2, 3, 5, device=device)
    got = pydl.act_stats(x, per_channel=True, backend=backend)
    want = pydl.act_stats(x.cpu(), per_channel=True, backend="reference")
    torch.testing.assert_close(got.counts.cpu(), want.counts, rtol=0, atol=0)

def _broken(device, backend):
    raise AssertionError("planted mismatch in " + backend)

def cases():
    return [("act_stats_per_channel", _act_stats)] + ([("broken", _broken)] if BROKEN else [])
'''


def _smoke_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sanitize_smoke", SMOKE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("broken", [False, True])
def test_sanitize_smoke_runs_every_case(tmp_path, broken, capsys):
    path = tmp_path / f"cases_{broken}.py"
    path.write_text(f"BROKEN = {broken}\n" + FAKE_CASES)
    rc = _smoke_module().run(str(path), "cpu", "cpu")
    out = capsys.readouterr().out
    assert "ok   act_stats_per_channel" in out, out
    if broken:
        assert rc == 1 and "FAIL broken: AssertionError: planted mismatch in cpu" in out
        assert "1/2 cases passed" in out
    else:
        assert rc == 0 and "1/1 cases passed on device=cpu backend=cpu" in out


def test_sanitize_smoke_without_cases_module_is_a_skip(tmp_path):
    r = subprocess.run([sys.executable, SMOKE, "--cases", str(tmp_path / "absent.py")], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == selftest.SKIPPED_NO_CASES and "SKIPPED: no cases module" in r.stdout
    md = selftest.verdict({"rc": r.returncode, "skip_rc": selftest.SKIPPED_NO_CASES})
    assert md.startswith("skipped") and selftest.verdict({"rc": 3, "skip_rc": 4}) == "FAILED (rc 3)"


def test_main_leaves_one_archive_printed_last(tmp_path, monkeypatch, capsys):
    """The whole driver with stand-in steps: one .tar.gz holding report and logs, its path the last line; a
    skipped sanitizer step makes the check fail (a skip is never a pass)."""
    py = sys.executable
    steps = [{"name": "doctor", "cmd": [py, "-c", "import os; print('cache', os.environ['TRITON_CACHE_DIR'])"],
              "timeout": 30},
             {"name": "sanitize-memcheck", "cmd": [py, "-c", "raise SystemExit(4)"], "timeout": 30, "skip_rc": 4}]
    monkeypatch.setattr(selftest, "plan", lambda args: steps)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    out = tmp_path / "gpu-check-x"
    rc = selftest.main(_args("--out", str(out), "--triton-cache", str(tmp_path / "tc")))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 1 and last == str(out) + ".tar.gz" and not out.exists()
    with tarfile.open(last) as tar:
        names = set(tar.getnames())
        assert {"gpu-check-x/report.md", "gpu-check-x/report.json", "gpu-check-x/doctor.log"} <= names
        md = tar.extractfile("gpu-check-x/report.md").read().decode()
        log = tar.extractfile("gpu-check-x/doctor.log").read().decode()
    assert "| doctor | ok |" in md and "| sanitize-memcheck | skipped (no emulated CUDA cases" in md
    assert f"cache {tmp_path / 'tc'}" in log, "every step sees the chosen Triton cache"
