"""Helpers the test files share (fixtures stay in conftest.py; pytest, not an import, hands those out).

* ``require_backend(name, device_type, op)``: skip the test, with the reason, when a backend cannot run here
  -- or fail it where ``PYDL_REQUIRE_BACKENDS`` says that backend must run (CI: every CPU backend).
* ``slow(backend)``: whether a backend runs program instances / threads one by one on the CPU, so a test
  gives it its tiny shapes and fast-mode gradchecks.
* ``per_backend(full, tiny)``: parameters for a test whose cases are too many for the slow backends.
* ``small_cnn()``: the debuggers' test model.
"""
import pytest
import torch
from torch import nn

from pydl import _env, backends

CPU_BACKENDS = ("reference", "cpu", "triton", "cuda_emu")
# Backends that run a kernel's program instances / threads one by one on the CPU: tests give them their tiny
# shapes and fast-mode gradchecks (tests/cuda_emu_cases.py chooses the emulator's shapes by the branches of
# each launcher instead).
SLOW_BACKENDS = ("triton", "cuda_emu")


def slow(backend: str) -> bool:
    return backend in SLOW_BACKENDS


def require_backend(name: str, device_type: str, op: str):
    ok, why = backends.available(name, device_type, op if name in ("cpu", "cuda", "cuda_emu") else None)
    if not ok:
        # PYDL_REQUIRE_BACKENDS: comma-separated "name" (on any device) or "name@device" entries that must be
        # usable here -- CI requires "cpu,triton"; the GPU check "cpu,cuda,triton@cuda" (a GPU machine's older
        # Triton may not pair with its numpy in the interpreter, which is not what a GPU check is about).
        required = _env.required_backends()  # a misspelt entry is an error, not a requirement quietly dropped
        if name in required or f"{name}@{device_type}" in required:
            pytest.fail(f"backend {name} is required here but unusable on {device_type}: {why}")
        pytest.skip(f"backend {name} unusable on {device_type}: {why}")


def small_cnn():
    """conv -> in-place ReLU -> dropout -> conv -> linear, seeded: in-place ops and a mode-dependent layer are
    what the debuggers' hooks must survive."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 2))


def per_backend(full, tiny, ids=str):
    """``pytest.mark.parametrize`` values ``(backend, *case)``: every case of ``full`` on the fast CPU backends,
    only ``tiny``'s on the slow ones (a cover of the branches where the whole cross product would take
    minutes). Each (backend, case) is its own test, so one failing case does not hide the others; the id
    starts with the backend's name, so ``-k cuda_emu`` selects these as it selects ``cpu_backend`` tests."""
    return [pytest.param(b, *case, id=f"{b}-{ids(case)}") for b in CPU_BACKENDS for case in (tiny if slow(b) else full)]
