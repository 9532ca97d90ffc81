"""``pydl selftest --gpu``: prove everything on a GPU machine in one go (scripts/gpu_check.sh calls this).

Steps, each logged to its own file in one report folder, whose path is printed last:

1. environment: ``pydl doctor`` (GPU, driver, torch/Triton/CUDA versions);
2. build: the CUDA (and C++) extensions for the local GPU's arch, with compile times;
3. tests: the whole test suite with the GPU tests enabled (CUDA and Triton backends on CUDA tensors, bf16);
4. sanitizer: ``compute-sanitizer --tool memcheck`` over a small script that runs every CUDA kernel once
   (when compute-sanitizer is installed);
5. benchmarks: ``pydl bench --device cuda`` (``--quick`` unless ``--full``), results copied into the report.

Works with the GPU machine's own torch and Triton, from a source checkout, installing nothing:
``PYTHONPATH=. python -m pydl.selftest --gpu``. Budget: under 10 minutes in all (``--budget``, default 570 s;
each step also has its own timeout, and a step that no longer fits is reported as skipped, never as passed).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny driver that touches every CUDA kernel once, for compute-sanitizer (which slows code ~100x).
SANITIZE_SCRIPT = r'''
import torch, pydl
from pydl import backends
torch.manual_seed(0)
x = torch.randn(3, 5, 7, 9, device="cuda")
for b in ("cuda", "triton"):
    for pc in (False, True):
        pydl.act_stats(x, per_channel=pc, backend=b).counts.sum().item()
        pydl.act_stats(x.contiguous(memory_format=torch.channels_last), per_channel=pc, backend=b).hist.sum().item()
ops = backends.all_ops()
print("ops:", sorted(ops))
extra = getattr(pydl, "_sanitize_smoke", None)  # ops may add their own smoke calls
if extra: extra()
torch.cuda.synchronize()
print("sanitize smoke: ok")
'''


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
        {"name": "doctor", "cmd": [py, "-m", "pydl.cli", "doctor"], "timeout": 60},
        {"name": "build", "cmd": [py, "-m", "pydl.cli", "build", "--require-cuda"], "timeout": 200},
    ]
    pytest_cmd = [py, "-m", "pytest", "tests", "-q", "-rs", "--junitxml", "{out}/junit.xml"]
    if args.tests_k:
        pytest_cmd += ["-k", args.tests_k]
    if _has_xdist() and args.jobs > 1:
        pytest_cmd += ["-n", str(args.jobs)]
    steps.append({"name": "tests", "cmd": pytest_cmd, "timeout": args.test_timeout})
    san = shutil.which("compute-sanitizer") or (
        "/usr/local/cuda/bin/compute-sanitizer" if os.path.exists("/usr/local/cuda/bin/compute-sanitizer") else None)
    if san and not args.no_sanitizer:
        steps.append({"name": "sanitizer", "cmd": [san, "--tool", "memcheck", "--error-exitcode", "3", py,
                                                   "{out}/sanitize_smoke.py"], "timeout": 120})
    bench = [py, "-m", "pydl.cli", "bench", "--device", "cuda", "--out", "{out}/bench"]
    if not args.full:
        bench.append("--quick")
    steps.append({"name": "bench", "cmd": bench, "timeout": args.bench_timeout})
    return steps


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401

        return True
    except ImportError:
        return False


def write_report(out: str, info: dict, results: List[dict]) -> str:
    """report.md + report.json in ``out``; returns the Markdown path."""
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"info": info, "steps": results}, f, indent=1)
    lines = [f"# pydl GPU check - {info.get('date')}", "",
             f"GPU: {info.get('gpu')}; torch {info.get('torch')} (CUDA {info.get('cuda')}), triton {info.get('triton')}, "
             f"pydl {info.get('pydl')}@{info.get('git')}", "",
             "| step | result | seconds | log |", "|---|---|---:|---|"]
    for r in results:
        verdict = {0: "ok", 124: "timed out", 125: "skipped (time budget)"}.get(r["rc"], f"FAILED (rc {r['rc']})")
        lines.append(f"| {r['name']} | {verdict} | {r['seconds']} | {r['log']} |")
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
    out = os.path.abspath(args.out or os.path.join(ROOT, "gpu-check", stamp))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sanitize_smoke.py"), "w") as f:
        f.write(SANITIZE_SCRIPT)
    env = os.environ.copy()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # Triton must work on the GPU; its CPU interpreter may not pair with the machine's numpy (Triton < 3.7.1
    # needs numpy <= 2.3), and those tests then skip with the reason
    env.setdefault("PYDL_REQUIRE_BACKENDS", "cpu,cuda,triton@cuda")
    from . import __version__

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "pydl": __version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        info["git"] = None
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
        r["tail"] = _tail(os.path.join(out, r["log"]))
        results.append(r)
        print(f"   -> rc {r['rc']} in {r['seconds']} s", flush=True)
    report = write_report(out, info, results)
    print(open(report).read())
    print(out)  # the report folder, last
    return 0 if all(r["rc"] == 0 for r in results) else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true", help="require a GPU and run the GPU tests and benchmarks")
    p.add_argument("--out", default=None, help="report folder (default gpu-check/<date>)")
    p.add_argument("--full", action="store_true", help="full benchmark shape sets (default --quick)")
    p.add_argument("--no-sanitizer", action="store_true")
    p.add_argument("--jobs", type=int, default=8, help="pytest-xdist workers when xdist is installed")
    p.add_argument("--tests-k", default=None, help="pytest -k filter")
    p.add_argument("--test-timeout", type=int, default=260)
    p.add_argument("--bench-timeout", type=int, default=150)
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
