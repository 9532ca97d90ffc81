"""One Triton kernel, two ways to run it: compiled on a GPU, interpreted on the CPU, in the same process.

Triton decides at *decoration* time whether ``@triton.jit`` gives a compiled kernel (``JITFunction``) or an
interpreted one (``InterpretedFunction``): it reads ``TRITON_INTERPRET`` when the decorator runs. A process
that wants both -- pydl's tests run the interpreter on CPU tensors while the CUDA backend runs on the GPU --
cannot get them from one environment variable. So :func:`jit` builds both objects from the same Python
function and picks one at launch time from where the arguments live:

* a launch ``kernel[grid](...)`` whose tensor arguments are on the CPU runs in the interpreter (numpy
  emulates each program one after another: slow, ~1000x, so keep shapes tiny, and blind to races);
* a launch whose tensors are on a CUDA device is compiled and run by Triton as usual;
* a call from inside another kernel (a ``@jit`` helper) is compiled inline by Triton on the GPU path; on
  the interpreter path Triton simply calls the function, which lands in ``__call__`` below.

Setting ``TRITON_INTERPRET=1`` before import still works: then both paths are the interpreter.

What the interpreter cannot do (DESIGN.md): arithmetic in bf16 (load/store/cast are fine, do the math in
fp32), libdevice functions such as tanh (use 2*sigmoid(2x)-1), autotuning (see :func:`autotune`).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

__all__ = ["jit", "autotune", "on_cpu"]


def on_cpu(args, kwargs) -> bool:
    """True if the launch's tensors are on the CPU (so the interpreter must run it)."""
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device.type == "cpu"
    return False


_interp_twins: dict = {}
_depth = 0


def _call_interpreted(self, *args, **kwargs):
    """Stands in for ``JITFunction.__call__`` while an interpreted kernel runs. Triton's own library
    (``tl.sum``, ``tl.max``, ``tl.cdiv``, ...) is written as ``@triton.jit`` functions; decorated without
    ``TRITON_INTERPRET`` they are compiled-only objects whose ``__call__`` refuses to run. During an
    interpreted launch they must run as Python, like everything else in the kernel."""
    twin = _interp_twins.get(self.fn)
    if twin is None:
        twin = _interp_twins[self.fn] = InterpretedFunction(self.fn)
    return _call_device_function(twin, args, kwargs)


def _call_device_function(twin: InterpretedFunction, args, kwargs):
    """``twin(*args, **kwargs)`` -- a @jit function called from inside an interpreted kernel -- minus a leak:
    ``InterpretedFunction.__call__`` patches triton.language for the interpreter and never undoes it (triton
    3.x). Patches to ``tl.core`` made there outlive the launch, and every kernel *compiled* later in the same
    process then fails in Triton's frontend ("'ir.value' object has no attribute 'dtype'" at tl.arange): a
    GPU test run after an interpreter test would fail. Same call, patches restored afterwards."""
    from triton.runtime import interpreter as _interp

    patch, restore_ok = getattr(_interp, "_patch_lang", None), hasattr(twin, "rewrite")
    if patch is None or not restore_ok:  # another triton: its own call, as before
        return twin(*args, **kwargs)
    scope = patch(twin.fn)
    try:
        return twin.rewrite()(*args, **kwargs)
    except Exception as e:
        raise _interp.InterpreterError(repr(e)) from e
    finally:
        scope.restore()


@contextlib.contextmanager
def _interpreting():
    global _depth
    saved = JITFunction.__call__
    if _depth == 0:
        JITFunction.__call__ = _call_interpreted
    _depth += 1
    try:
        # numpy warns where a GPU silently gives IEEE results (inf - inf = nan, x / 0 = inf): kernels that
        # handle non-finite values on purpose would drown the test log in warnings.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            yield
    finally:
        _depth -= 1
        if _depth == 0:
            JITFunction.__call__ = saved


class _DualFunction(JITFunction):
    """A JITFunction (so Triton's compiler accepts it as a callee) that carries its interpreted twin."""

    def __init__(self, fn, **kwargs):
        super().__init__(fn, **kwargs)
        self._interpreted = InterpretedFunction(fn, **kwargs)

    def run(self, *args, grid, warmup, **kwargs):
        if on_cpu(args, kwargs):
            with _interpreting():
                return self._interpreted.run(*args, grid=grid, warmup=warmup, **kwargs)
        return super().run(*args, grid=grid, warmup=warmup, **kwargs)

    def __call__(self, *args, **kwargs):
        # Only reached from inside an interpreted kernel: compiled kernels inline helpers at compile time.
        return _call_device_function(self._interpreted, args, kwargs)


def jit(fn=None, **kwargs):
    """Drop-in for ``triton.jit`` that works on CUDA tensors (compiled) and CPU tensors (interpreted)."""
    if fn is None:
        return functools.partial(jit, **kwargs)
    if triton.knobs.runtime.interpret if hasattr(triton, "knobs") else False:
        return triton.jit(fn, **kwargs)  # the whole process is interpreted: nothing to choose
    return _DualFunction(fn, **kwargs)


class _DualAutotuner:
    """Autotune on the GPU; a fixed config in the interpreter (it cannot autotune, and timing it is moot)."""

    def __init__(self, kernel: _DualFunction, configs, key, interpreter_config):
        self.kernel = kernel
        self.tuned = triton.autotune(configs=configs, key=key)(kernel)
        self.interpreter_config = interpreter_config or configs[0]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if on_cpu(args, kwargs):
                cfg = self.interpreter_config
                g = grid(dict(cfg.kwargs, **kwargs)) if callable(grid) else grid
                return self.kernel[g](*args, **kwargs, **cfg.kwargs)
            return self.tuned[grid](*args, **kwargs)

        return launch


def autotune(configs, key, interpreter_config=None):
    """``triton.autotune`` for :func:`jit` kernels: tunes on a GPU, uses ``interpreter_config`` (default:
    the first config) on CPU tensors."""

    def deco(kernel):
        return _DualAutotuner(kernel, configs, key, interpreter_config)

    return deco


@functools.lru_cache(maxsize=256)
def device_constants(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of per-layer constants (lo/hi, eps, activation parameters...) on ``device``, uploaded
    once per distinct tuple. Kernels take such constants as a tensor when they must be fp64 (a Python float
    argument reaches a Triton kernel as fp32); building it per call with ``torch.tensor(..., device="cuda")``
    would copy from pageable host memory and make the host wait on every launch."""
    return torch.tensor(values, dtype=dtype, device=device)
