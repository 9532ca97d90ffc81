#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU, within 10 minutes: build the CUDA extensions for this GPU, run
# the GPU tests (CI ran the CPU ones), compute-sanitizer memcheck, racecheck and synccheck over every case of
# the emulated CUDA suite, the benchmarks, and ONE report archive (gpu-check-<date>.tar.gz: Markdown + JSON +
# logs) whose path is printed last. Installs nothing: uses the machine's torch and Triton and runs pydl from
# this source checkout. Triton's compile cache lives in .triton-cache/ (reused by the next run; carry it to a
# fresh machine with the same Triton and GPU to skip recompiling). Extra arguments go to `pydl selftest`
# (e.g. --full, --triton-cache DIR).
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# a fresh cache per check, so the build step really compiles (and times) everything
export PYDL_CACHE_DIR="${PYDL_CACHE_DIR:-$PWD/.pydl-cache-gpu}"
PY="${PYTHON:-python3}"
exec "$PY" -m pydl.selftest --gpu "$@"
