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

What the interpreter cannot do (docs/ARCHITECTURE.md, "Adding an op"): arithmetic in bf16 (load/store/cast
are fine, do the math in fp32), libdevice functions such as tanh (use 2*sigmoid(2x)-1), autotuning (see
:func:`autotune`).

**One interpreted launch at a time.** Triton's interpreter runs a kernel by patching module globals
(``triton.language`` and, here, ``JITFunction.__call__``) for the duration of the launch. Two threads
interpreting at once would undo each other's patches half-way through, so interpreted launches are
serialised by one process-wide lock (``_INTERPRETER_LOCK``). The interpreter is for tests and learning:
correct from any thread matters more than parallel speed. Compiled (GPU) launches never take the lock.

**Every interpreted launch is also a compile test for a real GPU.** The interpreter accepts code that
Triton's compiler rejects: the compiler *specialises* each launch on its arguments (pointer dtypes; ints as
i32 or i64 by value; an int equal to 1 becomes a compile-time constant, so ``n.to(tl.int64)`` on it fails;
pointers and ints divisible by 16 get a divisibility hint), and it must fit the shared memory of the GPU.
So each interpreted launch records, before it runs, the specialisation the same arguments would get on a
GPU -- computed by Triton's own binder for a CUDA target, with CPU data pointers standing in for device
pointers (both allocators align bases to >= 16 bytes, so a view's offset decides divisibility alike) --
and, for an :func:`autotune` kernel, once per config, since a GPU would compile every one while tuning.
Where a launcher picks other constexprs for the interpreter than for a GPU (smaller tiles, an upcasting
path), it passes :func:`gpu_twin` so that the GPU's choice is recorded instead. Launches are deduplicated
by (kernel, signature, constexprs, divisibility, options). :func:`compile_for`
compiles one record with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` (no GPU
needed) and reports its shared memory against the target's per-block limit.

Nobody lists kernels by hand: ``tests/test_triton_compile.py::test_every_recorded_launch_compiles`` is
ordered last in a pytest session by ``tests/conftest.py`` and compiles everything the interpreter tests
launched before it (:func:`recorded_launches`) for sm_80 and sm_90. A new kernel is covered as soon as a
test launches it on a CPU tensor; a new argument pattern (an int that can be 1, a new dtype) as soon as a
test passes it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading

import numpy as np
import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

__all__ = ["jit", "autotune", "on_cpu", "device_constants", "gpu_twin", "recorded_launches", "compile_for"]


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


# Reentrant: an interpreted kernel calls its @jit helpers (``__call__`` below) while the launch holds it.
_INTERPRETER_LOCK = threading.RLock()


# --- the launch recorder (see the module docstring) ---------------------------------------------------------

# per-block shared-memory limits (bytes) with the opt-in attribute Triton sets: A100 163 KB, H100 227 KB
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# the specialisation does not depend on the arch among CUDA targets; one backend computes it for both
_RECORD_ARCH = 90


@dataclasses.dataclass(frozen=True)
class Launch:
    """What a GPU launch with the same arguments would compile: Triton's ``ASTSource`` inputs plus the
    launch options (num_warps, ...). ``error`` is set instead when the arguments could not be specialised."""

    kernel: "_DualFunction"
    signature: tuple  # ((arg name, "*fp32" | "i32" | "i64" | "constexpr" | ...), ...)
    constexprs: tuple  # ((path, value), ...) -- path is Triton's tuple index of the argument
    attrs: tuple  # ((path, (("tt.divisibility", 16),)), ...)
    options: tuple  # ((name, value), ...), e.g. num_warps from an autotune config
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.kernel.fn.__module__}.{self.kernel.fn.__name__}"

    def describe(self) -> str:
        sig = ", ".join(f"{n}:{t}" for n, t in self.signature if t != "constexpr")
        names = [n for n, _ in self.signature]
        const = ", ".join(f"{names[p[0]]}={v!r}" for p, v in self.constexprs)
        opts = "".join(f", {k}={v}" for k, v in self.options)
        return f"{self.name}({sig}; {const}{opts})"


_launches: dict = {}


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _gpu_binder(kernel: JITFunction):
    """Triton's argument binder for a CUDA target, made once per kernel (building it costs an exec)."""
    binder = kernel.__dict__.get("_pydl_gpu_binder")
    if binder is None:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        backend = make_backend(GPUTarget("cuda", _RECORD_ARCH, 32))
        binder = (backend, create_function_from_signature(kernel.signature, kernel.params, backend))
        kernel.__dict__["_pydl_gpu_binder"] = binder
    return binder


def gpu_twin(device: torch.device, **constexprs) -> dict:
    """Launch keywords that tell the recorder which constexprs a GPU launch would use instead of the
    interpreter's: ``kernel[grid](..., BLOCK=128, **gpu_twin(x.device, BLOCK=1024))``. For launchers that
    pick smaller tiles or an upcasting path for the interpreter -- the compile test must compile what a GPU
    runs. Empty on a GPU, where the launch already is the GPU launch."""
    return {"_pydl_gpu": constexprs} if device.type == "cpu" and constexprs else {}


def _record(kernel: JITFunction, args, kwargs, gpu: dict | None = None) -> None:
    """Adds the GPU specialisation of ``kernel[grid](*args, **kwargs)`` -- with ``gpu``'s constexprs in
    place of the interpreter's (see :func:`gpu_twin`) -- to the recorded launches. Never raises: a failure to
    specialise is itself recorded (as ``error``) for the compile test to report, since the interpreted launch
    itself may still be fine."""
    try:
        backend, binder = _gpu_binder(kernel)
        bound, spec, options = binder(*args, **dict(kwargs, **(gpu or {})))
        # mirrors JITFunction._pack_args (minus parse_options, which is per target: done in compile_for)
        names = [p.name for p in kernel.params]
        types = [s[0] for s in spec]
        values = list(bound.values())
        constexprs = tuple(((i,), values[i]) for i, t in enumerate(types) if t == "constexpr")
        attrs = tuple(((i,), _freeze(backend.parse_attr(s[1]))) for i, s in enumerate(spec)
                      if s[0] != "constexpr" and isinstance(s[1], str))
        launch = Launch(kernel, tuple(zip(names, types)), constexprs, attrs, tuple(sorted(options.items())))
    except Exception as e:  # noqa: BLE001 -- reported by the compile test, see the docstring
        launch = Launch(kernel, (), (), (), (), error=f"{type(e).__name__}: {e}")
    key = (id(kernel), launch.signature, tuple((p, repr(v)) for p, v in launch.constexprs), launch.attrs,
           launch.options, launch.error)
    _launches.setdefault(key, launch)


def recorded_launches() -> list:
    """The distinct GPU specialisations of every interpreted launch so far in this process (a copy)."""
    with _INTERPRETER_LOCK:
        return list(_launches.values())


def compile_for(launch: Launch, arch: int):
    """Compiles a recorded launch for ``sm_<arch>`` down to a cubin, as a GPU launch would (no GPU needed).
    Returns the CompiledKernel; raises Triton's CompilationError if the kernel does not compile, and
    ValueError if it needs more shared memory per block than the target has."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    if not isinstance(launch, Launch):
        raise TypeError(f"launch must be a Launch from recorded_launches(), got {type(launch).__name__}")
    if launch.error:
        raise ValueError(f"{launch.name}: could not specialise its arguments for a GPU: {launch.error}")
    if arch not in SHARED_MEMORY_LIMIT:
        raise ValueError(f"arch must be one of {sorted(SHARED_MEMORY_LIMIT)}, got {arch!r}")
    target = GPUTarget("cuda", arch, 32)
    options = make_backend(target).parse_options(dict(launch.options))
    attrs = {p: [list(a) for a in v] for p, v in launch.attrs}
    src = ASTSource(launch.kernel, dict(launch.signature), dict(launch.constexprs), attrs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    shared = compiled.metadata.shared
    if shared > SHARED_MEMORY_LIMIT[arch]:
        raise ValueError(f"{launch.describe()} needs {shared} bytes of shared memory per block on sm_{arch}; "
                         f"the limit is {SHARED_MEMORY_LIMIT[arch]} (a GPU launch would fail: OutOfResources)")
    return compiled


class _DualFunction(JITFunction):
    """A JITFunction (so Triton's compiler accepts it as a callee) that carries its interpreted twin."""

    def __init__(self, fn, **kwargs):
        super().__init__(fn, **kwargs)
        self._interpreted = InterpretedFunction(fn, **kwargs)

    def run(self, *args, grid, warmup, **kwargs):
        if on_cpu(args, kwargs):
            gpu = kwargs.pop("_pydl_gpu", None)
            with _INTERPRETER_LOCK:
                if kwargs.pop("_pydl_record", True):
                    _record(self, args, kwargs, gpu)
                with _interpreting():
                    return self._interpreted.run(*args, grid=grid, warmup=warmup, **kwargs)
        kwargs.pop("_pydl_record", None)
        kwargs.pop("_pydl_gpu", None)
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
        self.configs = list(configs)
        self.tuned = triton.autotune(configs=configs, key=key)(kernel)
        self.interpreter_config = interpreter_config or configs[0]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            gpu = kwargs.pop("_pydl_gpu", None)
            if on_cpu(args, kwargs):
                # a GPU would compile every config while tuning: each must compile, not only the one run here
                with _INTERPRETER_LOCK:
                    for c in self.configs:
                        _record(self.kernel, args, dict(kwargs, **c.all_kwargs()), gpu)
                cfg = self.interpreter_config
                g = grid(dict(cfg.kwargs, **kwargs)) if callable(grid) else grid
                return self.kernel[g](*args, **kwargs, **cfg.kwargs, _pydl_record=False)
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
