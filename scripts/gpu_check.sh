#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: build the CUDA extensions for this GPU, run the whole test
# suite with the GPU tests enabled, compute-sanitizer memcheck on a smoke run, the benchmarks, and a report
# folder (Markdown + JSON + logs) whose path is printed last. Installs nothing: uses the machine's torch and
# Triton and runs pydl from this source checkout. Extra arguments go to `pydl selftest` (e.g. --full).
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# a fresh cache per check, so the build step really compiles (and times) everything
export PYDL_CACHE_DIR="${PYDL_CACHE_DIR:-$PWD/.pydl-cache-gpu}"
PY="${PYTHON:-python3}"
exec "$PY" -m pydl.selftest --gpu "$@"
