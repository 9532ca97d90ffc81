"""``pydl learn check``: the environment self-test, then the levels of one exercise.

Levels (each is PASS, FAIL or SKIP; a skipped level is never counted as passed):

Triton track -- run by pydl/learn/runner.py in a subprocess with a time limit
  1. imports          the file imports and defines the function the checker calls
  2. correct on CPU   Triton's interpreter (TRITON_INTERPRET=1): several seeds, two or more block sizes,
                      sizes that are not block multiples, N = 1; outputs between poisoned guard regions
  3. correct on GPU   the same cases compiled on a CUDA GPU (SKIP without one)
  4. runs inside pydl for pydl's own ops: the learner's function replaces pydl's Triton backend
                      (Op.override) inside a small model and must match the reference backend

CUDA track -- pydl/learn/cuda.py
  1. compiles for the GPU (nvcc)   2. compiles against the CPU emulation (g++)
  3. correct on the CPU emulation (with its memcheck/racecheck/initcheck/synccheck)  4. source check (the
  technique an exercise teaches, e.g. warp shuffles)
  5. correct on a GPU (SKIP without one)

An exercise *passes* when no level failed and its CPU correctness level passed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from . import course

MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


# --------------------------------------------------------------------------------------------------
# Environment self-test
# --------------------------------------------------------------------------------------------------

def environment() -> List[dict]:
    """[{what, ok, detail, fix}] for everything the course may need. Cheap (no compiles)."""
    rows = []
    rows.append({"what": "python", "ok": sys.version_info >= (3, 9), "detail": sys.version.split()[0],
                 "fix": "Python >= 3.9"})
    try:
        import torch

        rows.append({"what": "torch", "ok": True, "detail": torch.__version__, "fix": ""})
        gpu = torch.cuda.is_available()
        rows.append({"what": "CUDA GPU", "ok": gpu,
                     "detail": torch.cuda.get_device_name(0) if gpu else "none: GPU levels are skipped (not passed)",
                     "fix": "optional; the course works on a CPU. On a GPU machine install a CUDA build of torch"})
    except Exception as e:  # noqa: BLE001
        rows.append({"what": "torch", "ok": False, "detail": f"{type(e).__name__}: {e}",
                     "fix": "pip install torch"})
    try:
        import numpy as np

        npv = np.__version__
    except Exception:  # noqa: BLE001
        npv = None
    try:
        import triton

        from ..backends import triton_status

        ok, why = triton_status("cpu")
        rows.append({"what": "triton interpreter", "ok": ok,
                     "detail": f"triton {triton.__version__}, numpy {npv}: {why}",
                     "fix": "pip install 'triton>=3.7.1' (works with numpy 2.4), or keep triton and "
                            "pip install 'numpy<2.4'"})
    except Exception as e:  # noqa: BLE001
        rows.append({"what": "triton interpreter", "ok": False, "detail": f"not importable ({type(e).__name__}: {e})",
                     "fix": "pip install triton  (on macOS/Windows, where there are no triton wheels, the Triton "
                            "track cannot run; the CUDA track's CPU levels still can)"})
    from .cuda import find_cxx, find_nvcc

    cxx = find_cxx()
    rows.append({"what": "C++ compiler", "ok": bool(cxx), "detail": cxx or "not found",
                 "fix": "apt install g++ (Linux) / xcode-select --install (macOS): the CUDA track's CPU emulation "
                        "needs it"})
    nvcc = find_nvcc()
    rows.append({"what": "nvcc", "ok": bool(nvcc), "detail": nvcc or "not found: 'compiles for the GPU' is skipped",
                 "fix": "install the CUDA toolkit and set CUDA_HOME (e.g. /usr/local/cuda); not needed for the "
                        "CPU levels"})
    return rows


def print_environment(rows, track: Optional[str] = None, out=None, verbose: bool = False) -> None:
    out = out or sys.stdout
    need = {"triton": {"python", "torch", "triton interpreter"},
            "cuda": {"python", "torch", "C++ compiler"}}.get(track, None)
    parts = []
    optional = {"CUDA GPU", "nvcc"}
    for r in rows:
        required = r["what"] not in optional if need is None else r["what"] in need
        if r["ok"]:
            parts.append(f"{r['what']} ok")
        else:
            parts.append(f"{r['what']} {'MISSING' if required else 'absent'}")
    out.write("environment: " + "; ".join(parts) + "\n")
    for r in rows:
        if verbose or (not r["ok"] and (r["what"] not in optional if need is None else r["what"] in need)):
            out.write(f"  {r['what']}: {r['detail']}" + (f"\n    fix: {r['fix']}" if not r["ok"] and r["fix"] else "")
                      + "\n")


def environment_ok(rows, track: str) -> bool:
    need = {"triton": {"python", "torch", "triton interpreter"}, "cuda": {"python", "torch", "C++ compiler"}}[track]
    return all(r["ok"] for r in rows if r["what"] in need)


# --------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------

@dataclass
class Result:
    exercise: str
    levels: List[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        cpu = [lv for lv in self.levels if ("CPU" in lv["name"]) and lv["name"].startswith("correct")]
        return (not any(lv["status"] == "fail" for lv in self.levels)) and bool(cpu) and all(
            lv["status"] == "pass" for lv in cpu)


def _run_triton(ex: course.Exercise, path: Path, device: str, timeout: float) -> List[dict]:
    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    with tempfile.TemporaryDirectory(prefix="pydl-learn-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "pydl.learn.runner", ex.name, str(path), "--device", device, "--out", str(out)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return [{"name": f"runs on {device}", "status": "fail",
                     "detail": f"did not finish within {timeout:.0f} s. An endless loop (a `range` whose step is "
                               f"0, a loop bound that is never reached) or sizes far too big for the "
                               f"interpreter. (--timeout raises the limit.)"}]
        if out.exists():
            return json.loads(out.read_text())["levels"]
        why = (r.stderr or r.stdout).strip()[-2500:]
        if r.returncode < 0:
            sig = -r.returncode
            why = (f"the checker's process died with signal {sig}"
                   + (" (segmentation fault or heap corruption): the kernel touched memory far outside a tensor "
                      "-- a load or store without a mask, or wrong offsets" if sig in (6, 7, 11) else "")
                   + "\n" + why)
        return [{"name": f"runs on {device}", "status": "fail", "detail": why or f"exit code {r.returncode}"}]


def check_many_triton(jobs: List[tuple], device: str = "cpu", timeout: float = 600) -> List[List[dict]]:
    """CPU (or GPU) levels of many (exercise name, file) pairs, run in as few processes as possible: one
    process runs jobs until one crashes (that job fails with the crash), then a new one continues. Used by the
    course's own tests, where starting a process per file would cost more than the checks themselves."""
    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    results: List[Optional[List[dict]]] = [None] * len(jobs)
    start = 0
    while start < len(jobs):
        with tempfile.TemporaryDirectory(prefix="pydl-learn-") as tmp:
            spec, out = Path(tmp) / "jobs.json", Path(tmp) / "results.jsonl"
            spec.write_text(json.dumps([[e, str(p)] for e, p in jobs[start:]]))
            cmd = [sys.executable, "-m", "pydl.learn.runner", "--batch", str(spec), "--device", device,
                   "--out", str(out)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                why = f"the process ended with code {r.returncode}: {(r.stderr or '')[-1500:]}"
            except subprocess.TimeoutExpired:
                why = f"timed out after {timeout:.0f} s"
            done = 0
            if out.exists():
                for line in out.read_text().splitlines():
                    rec = json.loads(line)
                    results[start + rec["job"]] = rec["levels"]
                    done = rec["job"] + 1
            if start + done < len(jobs):  # the job after the last completed one crashed the process
                results[start + done] = [{"name": f"runs on {device}", "status": "fail", "detail": why}]
                done += 1
            start += done
    return results  # type: ignore[return-value]


def check(ex: course.Exercise, path: Path, gpu: Optional[bool] = None, timeout: float = 120,
          nvcc: bool = True) -> Result:
    """Run every level of ``ex`` on the learner's file ``path``."""
    import torch

    t0 = time.perf_counter()
    res = Result(ex.name)
    path = Path(path).resolve()
    if not path.exists():
        res.levels.append({"name": "file exists", "status": "fail",
                           "detail": f"{path} not found: `pydl learn start {ex.name}` creates it"})
        return res
    have_gpu = torch.cuda.is_available() if gpu is None else gpu
    if ex.track == "triton":
        levels = _run_triton(ex, path, "cpu", timeout)
        res.levels.extend(levels)
        cpu_ok = levels and all(lv["status"] != "fail" for lv in levels)
        gpu_name = "correct on GPU (compiled Triton)"
        if not have_gpu:
            res.levels.append({"name": gpu_name, "status": "skip",
                               "detail": "no CUDA GPU here: not run, so NOT passed. " + ex.gpu_only_note()})
        elif not cpu_ok:
            res.levels.append({"name": gpu_name, "status": "skip", "detail": "fix the CPU level first"})
        else:
            glevels = _run_triton(ex, path, "cuda", timeout)
            res.levels.extend(lv for lv in glevels if lv["name"] != "imports")
    else:
        from . import cuda

        res.levels.extend(cuda.check(ex, path, use_gpu=have_gpu, nvcc=nvcc))
    res.seconds = time.perf_counter() - t0
    return res


def print_result(ex: course.Exercise, res: Result, out=None) -> None:
    w = (out or sys.stdout).write
    for lv in res.levels:
        w(f"  [{MARK[lv['status']]}] {lv['name']}")
        detail = str(lv.get("detail", "")).rstrip()
        if lv["status"] == "pass" and detail and "\n" not in detail:
            w(f" -- {detail}\n")
        else:
            w("\n")
            if detail:
                w("".join("         " + ln + "\n" for ln in detail.splitlines()))
    w(f"  ({res.seconds:.1f} s)\n")
    if res.passed:
        w(f"\nPASSED: {ex.name}.\nWhat you learned: {ex.learned}\n")
        if any(lv["status"] == "skip" and "GPU" in lv["name"] for lv in res.levels):
            w(f"Not checked here: the GPU level was skipped. {ex.gpu_only_note()}\n")
        nxt = course.next_of(ex)
        if nxt:
            w(f"Next: {nxt.name} -- {nxt.title}.  Run `pydl learn start {nxt.name}`.\n")
        else:
            w("That was the last exercise: you have written pydl's kernels yourself.\n")
    else:
        w(f"\nNot yet. Fix the first FAIL above; `pydl learn hint {ex.name}` gives a hint "
          f"(each call one more).\n")
