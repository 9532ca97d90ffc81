"""Runs every case of the emulated CUDA suite once on a real GPU, for compute-sanitizer.

``pydl selftest --gpu`` runs this script under ``compute-sanitizer --tool memcheck``, ``racecheck`` and
``synccheck``. The cases are the emulated suite's own (``tests/cuda_emu_cases.py``: ``cases() -> [(name, fn)]``,
``fn(device, backend)`` runs one op forward and backward and raises on a mismatch), chosen there so that every
``__global__`` function and every launcher branch runs. Reusing them means the sanitizers on a GPU see every
kernel the CPU emulator sees, with no second list to keep in step.

Exit status: 0 all cases passed; 1 a case raised (each is reported, the rest still run); 4 the cases module is
missing (reported as skipped by the GPU check, never as passed). The sanitizer's own findings make it exit
with its ``--error-exitcode``.

    python scripts/sanitize_smoke.py [--cases tests/cuda_emu_cases.py] [--device cuda] [--backend cuda]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_FAILED, EXIT_NO_CASES = 1, 4


def load_cases(path: str):
    """The cases module at ``path`` (imported by path: tests/ is not a package), or None if absent."""
    if not os.path.exists(path):
        return None
    tests_dir = os.path.dirname(os.path.abspath(path))
    if tests_dir not in sys.path:  # the cases module may import its neighbours (conftest helpers)
        sys.path.insert(0, tests_dir)
    spec = importlib.util.spec_from_file_location("pydl_sanitize_cases", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(cases_path: str, device: str, backend: str, select: str | None = None) -> int:
    mod = load_cases(cases_path)
    if mod is None:
        print(f"SKIPPED: no cases module at {cases_path} (the emulated CUDA suite writes it); nothing was "
              f"checked", flush=True)
        return EXIT_NO_CASES
    import torch

    cases = [(n, fn) for n, fn in mod.cases() if select is None or select in n]
    failed = []
    t0 = time.time()
    for name, fn in cases:
        t = time.time()
        try:
            fn(device, backend)
            if device.startswith("cuda"):
                torch.cuda.synchronize()  # an asynchronous fault is then reported against this case
            print(f"ok   {name} ({time.time() - t:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 -- every case runs; all failures are listed at the end
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3)
    print(f"{len(cases) - len(failed)}/{len(cases)} cases passed on device={device} backend={backend} "
          f"in {time.time() - t0:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    if not cases:
        print("no case matched: nothing was checked", flush=True)
        return EXIT_FAILED
    return EXIT_FAILED if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=os.path.join(ROOT, "tests", "cuda_emu_cases.py"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="cuda")
    p.add_argument("-k", dest="select", default=None, help="run only cases whose name contains this")
    a = p.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # pydl from this checkout
    return run(a.cases, a.device, a.backend, a.select)


if __name__ == "__main__":
    sys.exit(main())
