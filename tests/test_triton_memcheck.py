"""The Triton interpreter's memory checker (kernels/_memcheck.py): it must catch what outputs cannot show.

Each broken kernel below computes the right outputs -- its stray lanes are masked away at the store, or it
writes nothing -- so only the addresses give it away. The same kernel fixed passes, and the checker stays
silent outside a ``memcheck()`` block.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from pydl.kernels import _memcheck as mc  # noqa: E402
from pydl.kernels._jit import jit  # noqa: E402


@jit
def _add(x_ptr, y_ptr, out_ptr, n, SHIFT: tl.constexpr, MASK_LOADS: tl.constexpr, MASK_STORE: tl.constexpr,
         BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if MASK_LOADS:
        x = tl.load(x_ptr + offs + SHIFT, mask=mask)
        y = tl.load(y_ptr + offs, mask=mask)
    else:
        x = tl.load(x_ptr + offs + SHIFT)
        y = tl.load(y_ptr + offs)
    if MASK_STORE:
        tl.store(out_ptr + offs, x + y, mask=mask)
    else:
        tl.store(out_ptr + offs, x + y)


def _launch(n=37, block=16, shift=0, mask_loads=True, mask_store=True, x=None):
    x = torch.randn(n) if x is None else x
    y, out = torch.randn(n), torch.empty(n)
    _add[(triton.cdiv(n, block),)](x, y, out, n, SHIFT=shift, MASK_LOADS=mask_loads, MASK_STORE=mask_store,
                                   BLOCK=block)
    return x, y, out


pytestmark = pytest.mark.interpreter


def test_masked_kernel_passes_and_is_checked():
    seen = []
    real = mc._check
    mc._check = lambda *a: (seen.append(a[0]), real(*a))[1]
    try:
        with mc.memcheck():
            x, y, out = _launch()
    finally:
        mc._check = real
    assert torch.allclose(out, x + y)
    assert seen.count("load") >= 2 and "store" in seen  # every load and store went through the check


@pytest.mark.parametrize("kind, kw, what", [
    ("unmasked loads, masked store", dict(mask_loads=False), "load"),
    ("unmasked store", dict(mask_store=False), "store"),
    ("off by one (x[i + 1])", dict(shift=1), "load"),
    ("before the start (x[i - 1])", dict(shift=-1), "load"),
])
def test_out_of_bounds_access_is_reported(kind, kw, what):
    with mc.memcheck(), pytest.raises(Exception) as info:
        _launch(**kw)
    text = str(info.value)
    assert "OutOfBoundsAccess" in repr(info.value) or "out-of-bounds" in text, text
    assert f"out-of-bounds {what}" in text and "'_add'" in text and "program (" in text, text
    assert "x_ptr" in text or "out_ptr" in text or "y_ptr" in text, text


def test_a_strided_view_only_covers_its_own_elements():
    # the kernel gets a view into a larger buffer; reading the buffer around it is out of bounds for the launch
    buf = torch.randn(64)
    x = buf[8:8 + 37]
    with mc.memcheck():
        _launch(x=x)  # inside the view: fine
        with pytest.raises(Exception, match="past the end of argument 'x_ptr'"):
            _launch(x=x, shift=1)


def test_off_outside_the_block_and_env_switch(monkeypatch):
    monkeypatch.setattr(mc, "_on", 0)  # as in a process that never turned it on (CI turns it on for the session)
    _launch(mask_loads=False)  # not checked outside memcheck(): the default costs nothing
    assert not mc.enabled()
    code = "from pydl.kernels import _memcheck as mc; print(mc.enable_from_env())"
    env = dict(os.environ, PYDL_TRITON_MEMCHECK="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "True", r.stderr
    env["PYDL_TRITON_MEMCHECK"] = "sometimes"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "PYDL_TRITON_MEMCHECK='sometimes' is not a yes/no switch" in r.stderr
