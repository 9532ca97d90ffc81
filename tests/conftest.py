"""Shared test fixtures.

* ``cpu_backend``: parametrises a test over every backend that can run on CPU tensors here: ``reference``,
  ``cpu`` (the C++ extension; built on first use), ``triton`` (Triton's interpreter) and ``cuda_emu`` (the
  CUDA kernels on the CPU emulator, with its checks; ``pytest -k cuda_emu`` runs the emulated suite). A
  backend that is not usable on this machine is skipped with the reason, never silently passed.
* ``gpu`` marker: the test needs a CUDA GPU; skipped cleanly where there is none (``scripts/gpu_check.sh``
  runs them on a GPU machine).
* ``poison``: fills every ``torch.empty`` made during the test with NaN (floats) or a sentinel (ints), so an
  output element a kernel forgot to write shows up instead of passing as leftover memory.
"""

import pytest
import torch

from pydl import _env

from helpers import CPU_BACKENDS

SENTINEL = -123456789


def pytest_configure(config):
    config.addinivalue_line("markers", "triton_compile_last: runs after every other test of the session "
                                       "(compiles the Triton launches they recorded; see kernels/_jit.py)")


def pytest_collection_modifyitems(config, items):
    # the GPU compile of recorded Triton launches needs every interpreted launch of the session before it
    items.sort(key=lambda item: "triton_compile_last" in item.keywords)  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    return request.param


@pytest.fixture(params=("cuda", "triton"))
def gpu_backend(request):
    return request.param


@pytest.fixture
def exact_fp32():
    """TF32 off in torch's cuDNN (convolutions, RNNs) and cuBLAS matmuls for one test, restored after. GPU tests
    that compare pydl's exact fp32 with torch's own GPU result need torch exact too: cuDNN uses TF32 by default
    on Ampere and later (10-bit mantissa, ~1e-3 relative error), far outside an fp32 tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def poison(monkeypatch):
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype not in (torch.bool,) and not t.is_complex():
            t.fill_(SENTINEL)
        return t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_sessionstart(session):
    try:
        _env.required_backends()
    except ValueError as e:  # say it once, before any test runs, rather than in every test that skips
        raise pytest.UsageError(str(e)) from None
    if _env.raw("PYDL_TRITON_MEMCHECK"):
        # every interpreted Triton load/store of the session checked against its launch's tensors
        # (kernels/_memcheck.py); CI turns it on
        from pydl.kernels import _memcheck

        try:
            _memcheck.enable_from_env()
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
