"""Which kernels run: the backend registry.

Four backends, selectable by name, plus ``auto``:

==============  =====================================  ==========================================
backend         runs on                                written in
==============  =====================================  ==========================================
``reference``   any device                             plain PyTorch ops: the ground truth
``cpu``         CPU tensors                            C++ (csrc/cpu/<op>.cpp)
``cuda``        CUDA tensors                           CUDA C++ (csrc/cuda/<op>.cu)
``triton``      CUDA tensors; CPU via the interpreter  Triton (kernels/<op>.py)
``cuda_emu``    CPU tensors                            csrc/cuda/<op>.cu on the CPU emulator of CUDA
``auto``        -                                      the fastest usable one (never the interpreter)
==============  =====================================  ==========================================

Choose one per call (``backend="cpu"``), for a block of code (``with pydl.backend("triton"): ...``), or for
the process (``pydl.set_backend("reference")`` or the ``PYDL_BACKEND`` environment variable, read once; empty
means unset, a name it does not know is an error naming the variable). A call's argument wins over the
context, the context over the process default.

Asking for a backend that cannot run (wrong device, build failed, Triton missing) raises an error that says
why. ``auto`` never raises for that: it takes the next backend in :data:`AUTO_ORDER` and, when the reason is
a failed build or a missing tool rather than a kernel that does not exist, warns once. The decision reads the
:class:`Reason` every availability answer carries, never the wording of its message.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, ContextManager, Dict, Iterator, Optional, Tuple

from . import _build, _env
from ._kinds import BACKENDS, NAMES, Reason
from ._setting import ScopedSetting

# BACKENDS (the names), NAMES (those and "auto") and Reason live in the leaf pydl/_kinds.py, below the
# builder that this module uses; they are part of this module's API.

# What ``auto`` tries, fastest first, per device type. The order comes from benchmarks/ (see README).
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return name


# Until set_backend is called, PYDL_BACKEND decides. It is parsed on first use rather than at import, so a bad
# value surfaces as a clear error from the first op (and `pydl doctor` can still start and report it); not
# cached when it raises: every call names the variable until it is fixed or set_backend is used.
BACKEND_SETTING: ScopedSetting[str] = ScopedSetting("pydl_backend", _check_name,
                                                     lambda: _env.choice("PYDL_BACKEND", NAMES, "auto"))


def set_backend(name: str) -> None:
    """Set the process-wide default backend."""
    BACKEND_SETTING.set(name)


def get_backend() -> str:
    """The backend a call without ``backend=`` uses here: the innermost ``with backend(...)``, else the
    process default (``set_backend``, else ``PYDL_BACKEND``, else ``auto``)."""
    return BACKEND_SETTING.get()


def backend(name: str) -> ContextManager[str]:
    """``with pydl.backend("triton"): ...`` runs every pydl op inside on that backend (thread- and
    asyncio-safe: it is a context variable)."""
    return BACKEND_SETTING.scope(name)


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------

class Availability(tuple):
    """``(ok, why)`` -- unpacks like the plain pair callers have always used -- plus ``.reason``, a
    :class:`Reason`."""

    def __new__(cls, ok: bool, why: str, reason: Reason):
        self = super().__new__(cls, (ok, why))
        self.reason = reason
        return self

    def __getnewargs__(self):  # pickling (a spawned worker's report) must carry the reason too
        return (self[0], self[1], self.reason)

    ok = property(lambda self: self[0])
    why = property(lambda self: self[1])


_triton_cache: Dict[str, Availability] = {}


def triton_status(device_type: str) -> Availability:
    """(usable, reason) for Triton kernels on tensors of ``device_type``."""
    if device_type in _triton_cache:
        return _triton_cache[device_type]
    try:
        import triton  # noqa: F401
        from triton.runtime.interpreter import InterpretedFunction  # noqa: F401
    except Exception as e:  # noqa: BLE001
        res = Availability(False, f"triton is not importable ({type(e).__name__}: {e})", Reason.MISSING_TOOL)
    else:
        import torch

        ver = tuple(int(p) for p in triton.__version__.split(".")[:3] if p.isdigit())
        if device_type == "cuda":
            res = Availability(True, f"triton {triton.__version__} (compiled)", Reason.OK) \
                if torch.cuda.is_available() else Availability(False, "no CUDA GPU", Reason.NO_DEVICE)
        elif device_type == "cpu":
            import numpy as np

            npv = tuple(int(p) for p in np.__version__.split(".")[:2])
            if ver < (3, 7, 1) and npv >= (2, 4):
                res = Availability(False, f"triton {triton.__version__}'s interpreter needs numpy <= 2.3 "
                                          f"(found {np.__version__}); triton >= 3.7.1 works with numpy 2.4",
                                   Reason.MISSING_TOOL)
            else:
                res = Availability(True, f"triton {triton.__version__} interpreter (slow: tests and exercises only)",
                                   Reason.OK)
        else:
            res = Availability(False, f"Triton does not run on {device_type} tensors", Reason.WRONG_DEVICE)
    _triton_cache[device_type] = res
    return res


def available(name: str, device_type: str, op: Optional[str] = None) -> Availability:
    """Can backend ``name`` run ``op`` on tensors of ``device_type``? Returns (ok, why) with ``.reason``.
    For the compiled backends this builds the op's extension if needed (that is what 'usable' means)."""
    _check_name(name)
    import torch

    if name == "reference":
        return Availability(True, "plain PyTorch", Reason.OK)
    if name == "auto":
        return Availability(True, "picks the fastest usable backend", Reason.OK)
    if name == "triton":
        return triton_status(device_type)
    runs_on = "cpu" if name == "cuda_emu" else name  # the emulated CUDA backend takes CPU tensors
    if runs_on != device_type:
        return Availability(False, f"the {name} backend runs on {runs_on} tensors, not {device_type} tensors",
                            Reason.WRONG_DEVICE)
    if name == "cuda" and not torch.cuda.is_available():
        return Availability(False, "no CUDA GPU is available", Reason.NO_DEVICE)
    if op is None:
        return Availability(True, "compiled on first use", Reason.OK)
    if not _build.sources(op, name):
        return Availability(False, f"{op} has no {name} kernel", Reason.NO_KERNEL)
    res = _build.load(op, name)
    if res.ok:
        return Availability(True, f"loaded ({res.how})", Reason.OK)
    # First line: the kind and the reason in a few words (what a warning shows: for a compile error the
    # compiler's first error line, not the command that ran it); then the whole log for whoever asks.
    reason = res.reason if res.reason not in (None, Reason.OK) else Reason.BUILD_FAILED
    summary = res.summary or (res.error.strip().splitlines() or ["unknown error"])[0]
    why = f"{reason.value}: {summary}"
    if res.error.strip() and res.error.strip() != summary:
        why = f"{why}\n{res.error}"
    return Availability(False, why, reason)


# --------------------------------------------------------------------------------------------------
# Ops: per-backend implementations and resolution
# --------------------------------------------------------------------------------------------------

_warned: set = set()


class BackendUnavailable(RuntimeError):
    pass


class Op:
    """One pydl op's implementations, keyed by backend name; resolves ``auto`` and checks requests.

    ``impls`` maps backend name -> a zero-argument loader that returns the implementation callable (so
    that Triton is imported, or the C++ extension built, only when that backend is first used).
    ``build_unit``: the csrc/<device>/<unit> sources its compiled kernels are built from (default: ``name``;
    several ops can share one, as the eight rnn ops share ``rnn``).
    """

    def __init__(self, name: str, impls: Dict[str, Callable[[], Callable]], build_unit: Optional[str] = None) -> None:
        self.name = name
        self.build_unit = build_unit or name
        self._loaders = impls
        self._impls: Dict[str, Callable] = {}
        self._resolved: Dict[Tuple[str, str], str] = {}

    def backends(self) -> Tuple[str, ...]:
        return tuple(b for b in BACKENDS if b in self._loaders)

    def _usable(self, name: str, device_type: str) -> Availability:
        if name not in self._loaders:
            return Availability(False, f"{self.name} has no {name} implementation", Reason.NO_KERNEL)
        return available(name, device_type, self.build_unit if name in ("cpu", "cuda", "cuda_emu") else None)

    def resolve(self, requested: str, device_type: str) -> str:
        key = (requested, device_type)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        if requested == "auto":
            chosen = None
            for cand in AUTO_ORDER.get(device_type, ("reference",)):
                ok, why = avail = self._usable(cand, device_type)
                if ok:
                    chosen = cand
                    break
                if avail.reason.failed and (self.name, cand) not in _warned:
                    _warned.add((self.name, cand))
                    warnings.warn(f"pydl: the {cand} backend of {self.name} is unavailable ({why.splitlines()[0]}); "
                                  f"auto falls back to the next one. `pydl doctor` says more.", RuntimeWarning,
                                  stacklevel=4)
            chosen = chosen or "reference"
        else:
            _check_name(requested)
            ok, why = self._usable(requested, device_type)
            if not ok:
                raise BackendUnavailable(f"pydl: backend {requested!r} cannot run {self.name} on "
                                         f"{device_type} tensors: {why}")
            chosen = requested
        self._resolved[key] = chosen
        return chosen

    def impl(self, backend_name: str) -> Callable:
        fn = self._impls.get(backend_name)
        if fn is None:
            fn = self._impls[backend_name] = self._loaders[backend_name]()
        return fn

    @contextlib.contextmanager
    def override(self, backend_name: str, fn: Callable) -> Iterator[Op]:
        """Run ``fn`` in place of this op's ``backend_name`` implementation inside the block (same signature
        as the backend's implementation). The course uses it to plug a learner's kernel into a real model:
        ``with pydl.backends.all_ops()["act_stats"].override("triton", my_kernel): ...``"""
        _check_name(backend_name)
        if backend_name == "auto":
            raise ValueError("override a concrete backend, not 'auto'")
        had = backend_name in self._impls
        saved_impl, saved_loader = self._impls.get(backend_name), self._loaders.get(backend_name)
        self._impls[backend_name] = fn
        self._loaders[backend_name] = lambda: fn
        try:
            yield self
        finally:
            if had:
                self._impls[backend_name] = saved_impl
            else:
                self._impls.pop(backend_name, None)
            if saved_loader is None:
                self._loaders.pop(backend_name, None)
            else:
                self._loaders[backend_name] = saved_loader

    def __call__(self, requested: str, device_type: str, *args) -> Any:
        return self.impl(self.resolve(requested, device_type))(*args)


def reset_caches() -> None:
    """Forget resolved backends and warnings (tests use this after changing what is available)."""
    _warned.clear()
    _triton_cache.clear()
    for op in list(_ALL_OPS.values()):
        op._resolved.clear()


_ALL_OPS: Dict[str, Op] = {}


def register_op(op: Op) -> Op:
    _ALL_OPS[op.name] = op
    return op


def all_ops() -> Dict[str, Op]:
    """Every registered op by name. Importing any pydl module runs pydl/__init__.py, which imports pydl.ops and
    so registers every op: by the time anyone can call this, the table is complete (and this module, below
    the ops, need not import them)."""
    return dict(_ALL_OPS)
