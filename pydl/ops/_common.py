"""What every pydl op module shares: the ``pydl`` torch.library namespace and argument checks.

Each op lives in its own module (pydl/ops/<op>.py) with the same shape:
  1. the schema, defined once in the ``pydl`` namespace (``torch.ops.pydl.<op>``);
  2. the per-backend implementations: ``reference`` (plain PyTorch), ``cpu`` / ``cuda`` (the compiled
     extensions' ``torch.ops.pydl_cpu.<op>`` / ``torch.ops.pydl_cuda.<op>``), ``triton`` (pydl.kernels.<op>);
  3. one dispatcher kernel for the CPU and CUDA keys that checks the arguments and calls the chosen backend;
  4. a fake (meta) implementation, so torch.compile and opcheck can trace it;
  5. autograd, where the op has a backward;
  6. the public Python function, which turns ``backend=None`` into the current default.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import numpy as np
import torch

LIB = torch.library.Library("pydl", "FRAGMENT")

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# "Is this a plain eager call?" An op may take a fast path that skips its registered torch.library op (whose
# generated autograd wrapper costs tens of microseconds a call) only when nothing could tell the
# difference: no tracer, compiler, mode or transform is watching, and every tensor is a plain torch.Tensor
# (a subclass may override __torch_function__/__torch_dispatch__). Anything else takes the registered op,
# which is what torch.compile, opcheck, FakeTensor, vmap and friends understand.
# --------------------------------------------------------------------------------------------------

PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_peek_interpreter_stack = torch._C._functorch.peek_interpreter_stack
_len_torch_dispatch_stack = torch._C._len_torch_dispatch_stack
_is_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_get_tracing_state = torch._C._get_tracing_state


def plain_eager(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the call is plain eager PyTorch: no torch.compile / dynamo tracing, no torch.jit tracing, no
    TorchFunctionMode or TorchDispatchMode (FakeTensorMode, FunctionalTensorMode, proxy tracing...), no
    functorch transform (vmap/grad/jvp wrap tensors that still look like torch.Tensor), and every tensor
    given (None allowed) is exactly a torch.Tensor or nn.Parameter. Costs well under a microsecond."""
    for t in tensors:
        if t is not None and type(t) not in PLAIN_TENSOR_TYPES:
            return False
    return not (torch.compiler.is_compiling() or _get_tracing_state() is not None
                or _is_torch_function_mode_enabled() or _len_torch_dispatch_stack() > 0
                or _peek_interpreter_stack() is not None)


def check_floating(t: object, op: str, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pydl.{op}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"pydl.{op}: {arg} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def compiled(namespace: str, op: str) -> Callable[[], Callable]:
    """Loader for a compiled backend's kernel: ``torch.ops.<namespace>.<op>`` once its library is loaded.
    (The build itself happens in pydl.backends.available(), which runs first and records failures.)"""

    def load():
        return getattr(getattr(torch.ops, namespace), op).default

    return load


# --------------------------------------------------------------------------------------------------
# Scalar argument checks for the public functions. The dispatcher would refuse a wrong type too, but with
# its schema dump ("Expected a value of type 'int' for argument 'bins'... Declaration: ..."), and Python's
# int()/float() would quietly truncate 3.7 to 3 or accept the string '10'. These name the argument and what
# it accepts, in the caller's terms, and return the value as the plain Python type the schema wants.
# --------------------------------------------------------------------------------------------------

def check_int(v: object, op: str, arg: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """An int (a bool or a whole float is not one: ``bins=3.0`` is as likely a mistake as ``3.7``) in
    ``[lo, hi]``."""
    accepted = "an int" + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else
                           f" >= {lo}" if lo is not None else "")
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"pydl.{op}: {arg} must be {accepted}, got {v!r} ({type(v).__name__})")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"pydl.{op}: {arg} must be {accepted}, got {v!r}")
    return int(v)


def check_real(v: object, op: str, arg: str, accepted: str) -> float:
    """A real number (int or float, numpy scalars included; not a bool, a string or a tensor); ``accepted``
    says which values the caller may pass, for the message. Range checks are the caller's."""
    if type(v) is float:  # the common case, without the slower isinstance against the numbers ABC
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"pydl.{op}: {arg} must be {accepted}, got {v!r} ({type(v).__name__})")
    return float(v)


def check_bool(v: object, op: str, arg: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"pydl.{op}: {arg} must be True or False, got {v!r} ({type(v).__name__})")
    return bool(v)


def _backends():
    """pydl.backends, imported on first use (it imports the op modules, which import this one); then from
    the module global, since an import statement on every call costs more than the check itself."""
    global _BACKENDS
    if _BACKENDS is None:
        from .. import backends

        _BACKENDS = backends
    return _BACKENDS


_BACKENDS = None


def check_backend_name(backend: Optional[str], op: str) -> str:
    """``backend=`` of a public function: None (the current default) or a backend name (checked later, when
    it is resolved, against the names pydl knows)."""
    if type(backend) is str:  # the common case first
        return backend
    backends = _backends()
    if backend is None:
        return backends.get_backend()
    if not isinstance(backend, str):
        raise TypeError(f"pydl.{op}: backend must be a str ({', '.join(map(repr, backends.NAMES))}) or None, "
                        f"got {backend!r} ({type(backend).__name__})")
    return backend
