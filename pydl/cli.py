"""The ``pydl`` command.

    pydl doctor            what is installed, built and usable here, and why not
    pydl build             compile every C++/CUDA extension now (instead of on first use) and time it
    pydl bench [OPS...]    benchmarks against the native torch ops (see benchmarks/)
    pydl demo [rnn]        the main job: train a small model with pydl kernels and debuggers, write a report
    pydl learn ...         the kernel-writing course
    pydl selftest --gpu    the one-command GPU check (scripts/gpu_check.sh)

Each subcommand lives in the module that owns it and registers itself through ``register(subparsers)``;
this file only wires them together, importing each lazily so ``pydl doctor`` works even if, say,
matplotlib is missing.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from .doctor import doctor_report, print_doctor

# subcommand -> (module with register(subparsers), the help line `pydl --help` shows). Only the module of the
# subcommand that runs is imported: `pydl --help` or `pydl doctor` need neither the benchmarks nor the demo's
# plotting stack, and a module that cannot be imported (matplotlib missing) takes only its own command down.
_SUBCOMMANDS = {
    "bench": ("pydl.bench", "benchmark pydl's ops against torch (see benchmarks/)"),
    "demo": ("pydl.demo", "train a small model with pydl kernels and write a report of its insides"),
    "learn": ("pydl.learn.cli", "the kernel-writing course (works without a GPU)"),
    "selftest": ("pydl.selftest", "one-command check on a GPU machine: build, GPU tests, sanitizer, "
                 "benchmarks, report"),
}


def _command_in(argv) -> str:
    """The subcommand argv names: its first word that is not an option (the top-level parser has no option
    that takes a value, so nothing else can stand there)."""
    return next((a for a in argv if not a.startswith("-")), "")


# --------------------------------------------------------------------------------------------------
# doctor (the report itself lives in pydl/doctor.py: the demo and the GPU check embed it too)
# --------------------------------------------------------------------------------------------------

def _doctor(args) -> int:
    print_doctor(doctor_report(build=args.build))
    return 0


# --------------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------------

def _build_cmd(args) -> int:
    from . import _build, backends

    devices = args.device or ["cpu", "cuda"]
    failed = 0
    for dev in devices:
        if dev == "cuda":
            ok, why = _build.cuda_toolchain()
            if not ok:
                print(f"cuda: skipped - {why}")
                if args.require_cuda:
                    failed += 1
                continue
            print(f"cuda: {why}; archs {_build.cuda_arch_list()}")
        ops = args.ops or _build.compiled_ops(dev)
        for op in ops:
            t0 = time.perf_counter()
            res = _build.load(op, dev, verbose=args.verbose, force=args.force)
            dt = time.perf_counter() - t0
            if res.ok:
                print(f"  {dev:<5} {op:<14} ok    {dt:6.1f} s  {res.how}")
            else:
                failed += 1
                why = (res.reason or backends.Reason.BUILD_FAILED).value
                print(f"  {dev:<5} {op:<14} FAILED {dt:5.1f} s  {why}: {res.summary}\n{res.error}")
    print(f"extension cache: {_build.cache_dir()}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pydl", description="Hand-written PyTorch kernels you can read, run, "
                                     "check and beat.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="what is built and usable here, and why not")
    p.add_argument("--build", action="store_true", help="build the extensions first (slow the first time)")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("build", help="compile the C++/CUDA extensions now and report times")
    p.add_argument("ops", nargs="*", help="ops to build (default: all)")
    p.add_argument("--device", action="append", choices=["cpu", "cuda", "cuda_emu"],
                   help="cpu, cuda (default both), cuda_emu (the CUDA kernels for the CPU emulator)")
    p.add_argument("--require-cuda", action="store_true", help="fail if the CUDA toolchain is unavailable")
    p.add_argument("--force", action="store_true", help="rebuild from scratch: remove every cached build output "
                   "first (the old library is never loaded) and ignore ahead-of-time builds in pydl/_ext")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_build_cmd)

    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = _command_in(argv)
    for name, (modname, help_line) in _SUBCOMMANDS.items():
        if name != chosen:  # listed, not imported: parsing stops at the chosen command
            sub.add_parser(name, help=help_line)
            continue
        try:
            mod = importlib.import_module(modname)
        except Exception as e:  # noqa: BLE001 - a module that cannot be imported: say so, do not crash
            why = f"{type(e).__name__}: {e}"
            p = sub.add_parser(name, help=f"(unavailable: {why})")
            p.set_defaults(func=lambda a, n=name, w=why: _unavailable(n, w))
        else:
            mod.register(sub)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def _unavailable(name, why) -> int:
    print(f"pydl {name}: unavailable here ({why})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
