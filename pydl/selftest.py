"""``pydl selftest --gpu``: prove everything on a GPU machine in one go (scripts/gpu_check.sh calls this).

Steps, each logged to its own file; the report is ONE archive, ``gpu-check-<date>.tar.gz`` (report.md,
report.json, one log per step, junit.xml, benchmark results), whose path is printed last:

1. environment: ``pydl doctor`` (GPU, driver, torch/Triton/CUDA versions);
2. build: the CUDA (and C++) extensions for the local GPU's arch, with compile times;
3. tests: only what needs the GPU -- the ``gpu``-marked tests (the cuda and triton backends on CUDA tensors,
   bf16, cuDNN comparisons). CI already ran every CPU test on this commit; rerunning them here would spend the
   budget on what is already known;
4. sanitizers: ``compute-sanitizer`` with memcheck, racecheck and synccheck, each over
   ``scripts/sanitize_smoke.py``, which runs every case of the emulated CUDA suite (``tests/cuda_emu_cases.py``)
   once on the GPU -- the same shapes that make every kernel and launcher branch run in the emulator. Without
   that module the steps are reported as skipped, never as passed;
5. benchmarks: ``pydl bench --device cuda`` (``--quick`` unless ``--full``), results in the archive.

Works with the GPU machine's own torch and Triton, from a source checkout, installing nothing:
``PYTHONPATH=. python -m pydl.selftest --gpu``. Budget: under 10 minutes in all (``--budget``, default 570 s).
The step time limits (``STEP_LIMITS``) add up to no more than the default budget, so each step gets its whole
limit however long the others take within theirs; a step that no longer fits is reported as skipped.

Triton cache: compiling the Triton kernels for the GPU tests takes a good part of the test step on a cold
cache. The check sets ``TRITON_CACHE_DIR`` to ``--triton-cache`` (default: ``$TRITON_CACHE_DIR`` if set, else
``.triton-cache/`` in the checkout, git-ignored), so a second run on the same machine -- or a run on a fresh
machine that was handed the ``.triton-cache`` folder of an earlier run with the same Triton version and GPU arch
(copy it next to the checkout, or send it along with the working tree) -- reuses the compiled kernels. A cache
from another Triton version or arch is harmless: its entries simply never match.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from typing import List, Optional

from .results import environment, markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Seconds per step. Their sum stays within the default --budget (570 s; tests check it).
STEP_LIMITS = {"doctor": 30, "build": 130, "tests": 150, "sanitize-memcheck": 60, "sanitize-racecheck": 60,
               "sanitize-synccheck": 45, "bench": 90}
SANITIZER_TOOLS = {"memcheck": ["--leak-check", "no"], "racecheck": ["--racecheck-report", "hazard"],
                   "synccheck": []}
SKIPPED_NO_CASES = 4  # scripts/sanitize_smoke.py: the emulated suite's cases module is absent
VERDICTS = {0: "ok", 124: "timed out", 125: "skipped (time budget)"}

def _run(cmd: List[str], log_path: str, timeout: int, env: Optional[dict] = None) -> dict:
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n\n")
        log.flush()
        try:
            p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                               env=env or os.environ.copy())
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = 124
            log.write(f"\n[timed out after {timeout} s]\n")
        except FileNotFoundError as e:
            rc = 127
            log.write(f"\n[{e}]\n")
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 1), "log": os.path.basename(log_path)}


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def plan(args) -> List[dict]:
    """The steps to run, as data (tests check this without a GPU)."""
    py = sys.executable
    steps = [
        {"name": "doctor", "cmd": [py, "-m", "pydl.cli", "doctor"]},
        {"name": "build", "cmd": [py, "-m", "pydl.cli", "build", "--require-cuda"]},
    ]
    pytest_cmd = [py, "-m", "pytest", "tests", "-q", "-rs", "-m", "gpu", "--junitxml", "{out}/junit.xml"]
    if args.tests_k:
        pytest_cmd += ["-k", args.tests_k]
    if _has_xdist() and args.jobs > 1:
        pytest_cmd += ["-n", str(args.jobs)]
    steps.append({"name": "tests", "cmd": pytest_cmd})
    san = shutil.which("compute-sanitizer") or (
        "/usr/local/cuda/bin/compute-sanitizer" if os.path.exists("/usr/local/cuda/bin/compute-sanitizer") else None)
    if san and not args.no_sanitizer:
        smoke = [py, os.path.join(ROOT, "scripts", "sanitize_smoke.py"), "--device", "cuda", "--backend", "cuda"]
        for tool, extra in SANITIZER_TOOLS.items():
            steps.append({"name": f"sanitize-{tool}", "skip_rc": SKIPPED_NO_CASES,
                          "cmd": [san, "--tool", tool, *extra, "--error-exitcode", "3", "--print-limit", "50",
                                  *smoke]})
    bench = [py, "-m", "pydl.cli", "bench", "--device", "cuda", "--out", "{out}/bench"]
    if not args.full:
        bench.append("--quick")
    steps.append({"name": "bench", "cmd": bench})
    limits = dict(STEP_LIMITS, tests=args.test_timeout, bench=args.bench_timeout)
    for step in steps:
        step["timeout"] = limits[step["name"]]
    return steps


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401

        return True
    except ImportError:
        return False


def verdict(result: dict) -> str:
    """A step's result in words; only rc 0 reads "ok"."""
    if result.get("skip_rc") is not None and result["rc"] == result["skip_rc"]:
        return "skipped (no emulated CUDA cases: tests/cuda_emu_cases.py is missing)"
    return VERDICTS.get(result["rc"], f"FAILED (rc {result['rc']})")


def archive(out: str) -> str:
    """Packs the report folder into ``<out>.tar.gz`` (one file to carry off the GPU machine) and removes the
    folder; returns the archive's path."""
    path = shutil.make_archive(out, "gztar", root_dir=os.path.dirname(out), base_dir=os.path.basename(out))
    shutil.rmtree(out)
    return path


def write_report(out: str, info: dict, results: List[dict]) -> str:
    """report.md + report.json in ``out``; returns the Markdown path."""
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"info": info, "steps": results}, f, indent=1)
    lines = [f"# pydl GPU check - {info.get('date')}", "",
             f"GPU: {info.get('gpu')}; torch {info.get('torch')} (CUDA {info.get('cuda')}), "
             f"triton {info.get('triton')}, "
             f"pydl {info.get('pydl')}@{info.get('git')}", "",
             markdown_table(("step", "result", "seconds", "log"),
                            [(r["name"], verdict(r), r["seconds"], r["log"]) for r in results], "llrl")]
    for r in results:
        lines += ["", f"## {r['name']}", "", "```", r.get("tail", "").rstrip(), "```"]
    bench_md = os.path.join(out, "bench", "results.md")
    if os.path.exists(bench_md):
        lines += ["", "## Benchmarks", "", open(bench_md).read()]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(args) -> int:
    import torch

    if args.gpu and not torch.cuda.is_available():
        print("pydl selftest --gpu: no CUDA GPU is visible here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(ROOT, "gpu-check", f"gpu-check-{stamp}"))
    os.makedirs(out, exist_ok=True)
    env = os.environ.copy()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = os.path.abspath(args.triton_cache)  # see the module docstring
    os.makedirs(env["TRITON_CACHE_DIR"], exist_ok=True)
    # Triton must work on the GPU; its CPU interpreter may not pair with the machine's numpy (Triton < 3.7.1
    # needs numpy <= 2.3), and those tests then skip with the reason
    env.setdefault("PYDL_REQUIRE_BACKENDS", "cpu,cuda,triton@cuda")
    info = environment("cuda")
    results = []
    deadline = time.time() + args.budget  # the whole check must fit one 10-minute device call
    for step in plan(args):
        cmd = [c.replace("{out}", out) for c in step["cmd"]]
        left = int(deadline - time.time())
        if left < 20:
            results.append({"name": step["name"], "cmd": " ".join(cmd), "rc": 125, "seconds": 0.0,
                            "log": "-", "tail": f"skipped: only {left} s of the {args.budget} s budget left"})
            print(f"== {step['name']}: skipped (budget)", flush=True)
            continue
        print(f"== {step['name']}: {' '.join(cmd)}", flush=True)
        r = _run(cmd, os.path.join(out, f"{step['name']}.log"), min(step["timeout"], left), env)
        r["name"] = step["name"]
        if "skip_rc" in step:
            r["skip_rc"] = step["skip_rc"]
        r["tail"] = _tail(os.path.join(out, r["log"]))
        results.append(r)
        print(f"   -> rc {r['rc']} in {r['seconds']} s", flush=True)
    report = write_report(out, info, results)
    print(open(report).read())
    print(archive(out))  # the report, one file, last
    # a skipped step is not a pass: the check succeeds only if every step ran and passed
    return 0 if all(r["rc"] == 0 for r in results) else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true", help="require a GPU and run the GPU tests and benchmarks")
    p.add_argument("--out", default=None, help="report folder, packed into <out>.tar.gz at the end "
                                               "(default gpu-check/gpu-check-<date>)")
    p.add_argument("--full", action="store_true", help="full benchmark shape sets (default --quick)")
    p.add_argument("--no-sanitizer", action="store_true")
    p.add_argument("--jobs", type=int, default=8, help="pytest-xdist workers when xdist is installed")
    p.add_argument("--tests-k", default=None, help="pytest -k filter")
    p.add_argument("--test-timeout", type=int, default=STEP_LIMITS["tests"])
    p.add_argument("--bench-timeout", type=int, default=STEP_LIMITS["bench"])
    p.add_argument("--triton-cache", default=os.environ.get("TRITON_CACHE_DIR") or os.path.join(ROOT, ".triton-cache"),
                   help="Triton's compile cache for every step (kept between runs; see the module docstring)")
    p.add_argument("--budget", type=int, default=570, help="seconds for the whole check (steps beyond it are "
                                                          "skipped and reported as such)")


def register(sub) -> None:
    p = sub.add_parser("selftest", help="one-command check on a GPU machine: build, GPU tests, sanitizer, "
                                        "benchmarks, report")
    add_arguments(p)
    p.set_defaults(func=main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pydl.selftest")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
