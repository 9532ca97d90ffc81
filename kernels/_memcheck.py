"""A memory checker for Triton's interpreter: every load and store must land inside a tensor of the launch.

Why it is needed. On a GPU an out-of-bounds ``tl.load`` usually reads some other allocation and goes unseen,
and in Triton's interpreter (numpy, on the CPU) it reads whatever sits in the process's memory. Poisoned guard
regions around *outputs* catch stray stores, but an unmasked *load* whose out-of-range lanes are later
masked away at the store (the classic vector add with ``mask`` on ``tl.store`` only) leaves no trace in any
output. Only a check of the addresses themselves catches it -- what ``compute-sanitizer --tool memcheck``
does on a GPU.

How. Two interpreter internals are wrapped while the checker is on:

* ``GridExecutor.__call__`` -- one launch -- records the byte range ``[ptr, ptr + span)`` of every tensor
  argument (a strided view's span runs from its first to its last element) and the kernel's name;
* ``InterpreterBuilder.create_masked_load`` / ``create_masked_store`` -- every ``tl.load`` / ``tl.store``
  (unmasked ones arrive here with an all-true mask) -- check the addresses of the *active* lanes, each
  ``[addr, addr + itemsize)``, against the union of those ranges. Masked-off lanes are never touched, so they
  are never checked: a mask is exactly how a kernel says "not this lane".

A violation raises :class:`OutOfBoundsAccess` naming the kernel, the program id, load or store, how many lanes
strayed, and the nearest tensor argument with how far past its end (or before its start) the access went.

Scope: CPU tensors (the interpreter then works on their memory in place; CUDA tensors would be copied to the
host first and are not checked). Turn it on with :func:`memcheck` (a context manager), :func:`enable`, or the
environment variable ``PYDL_TRITON_MEMCHECK=1`` read by :func:`enable_from_env`.
"""
from __future__ import annotations

import contextlib
import threading
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["OutOfBoundsAccess", "memcheck", "enable", "disable", "enabled", "enable_from_env"]


class OutOfBoundsAccess(RuntimeError):
    """A Triton load or store touched memory outside every tensor argument of its launch."""


_state = threading.local()
_lock = threading.Lock()
_installed = False
_on = 0  # how many enable() calls are active (nesting of memcheck() blocks)


def _frames() -> list:
    if not hasattr(_state, "frames"):
        _state.frames = []
    return _state.frames


def _tensor_range(t) -> Optional[Tuple[int, int, str]]:
    """Byte range [start, end) that the strided view ``t`` covers (None when it has no elements)."""
    if t.numel() == 0:
        return None
    span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))  # offset of the last element
    start = t.data_ptr()
    return start, start + (span + 1) * t.element_size(), ""


class _Launch:
    """The tensors of one interpreted launch, as a sorted union of byte intervals."""

    def __init__(self, name: str, named_ranges: List[Tuple[int, int, str]]):
        self.name = name
        self.named = sorted(named_ranges)
        merged: List[List[int]] = []
        for lo, hi, _ in self.named:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = np.array([m[0] for m in merged], dtype=np.uint64)
        self.ends = np.array([m[1] for m in merged], dtype=np.uint64)

    def outside(self, addrs: np.ndarray, size: int) -> np.ndarray:
        """Boolean mask of the addresses whose [a, a + size) is not inside one interval."""
        if len(self.starts) == 0:
            return np.ones(addrs.shape, dtype=bool)
        idx = np.searchsorted(self.starts, addrs, side="right").astype(np.int64) - 1
        ok = idx >= 0
        end = self.ends[np.clip(idx, 0, None)]
        ok &= (addrs + np.uint64(size)) <= end
        return ~ok

    def describe(self, addr: int, size: int) -> str:
        best = None
        for lo, hi, name in self.named:
            if addr >= hi:
                d = (addr + size - hi, f"{(addr + size - hi + size - 1) // size} element(s) past the end of")
            else:
                d = (lo - addr, f"{(lo - addr + size - 1) // size} element(s) before the start of")
            if best is None or d[0] < best[0]:
                best = (d[0], f"{d[1]} argument {name!r}")
        return best[1] if best else "no tensor argument at all"


def _program_id() -> str:
    from triton.runtime.interpreter import interpreter_builder

    idx = getattr(interpreter_builder, "grid_idx", None)
    return "?" if idx is None else str(tuple(int(i) for i in idx))


def _check(kind: str, ptrs, mask, dtype_np) -> None:
    frames = _frames()
    if not _on or not frames or frames[-1] is None:
        return
    launch = frames[-1]
    addrs = np.asarray(ptrs.data).astype(np.uint64, copy=False)
    active = np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape)
    a = addrs[active]
    if a.size == 0:
        return
    size = np.dtype(dtype_np).itemsize
    bad = launch.outside(a, size)
    if bad.any():
        first = int(a[bad][0])
        raise OutOfBoundsAccess(
            f"out-of-bounds {kind} in Triton kernel {launch.name!r}, program {_program_id()}: "
            f"{int(bad.sum())} of {a.size} active lanes touch memory outside every tensor argument "
            f"(first: {launch.describe(first, size)}). Mask the {kind} (mask=offsets < n) or fix the offsets.")


def _install() -> None:
    """Wrap the interpreter's launch and memory ops (once per process; they only act while enabled)."""
    global _installed
    with _lock:
        if _installed:
            return
        from triton.runtime import interpreter as ti

        builder_cls = type(ti.interpreter_builder)
        orig_load, orig_store = builder_cls.create_masked_load, builder_cls.create_masked_store
        orig_call = ti.GridExecutor.__call__

        def create_masked_load(self, ptrs, mask, other, *args, **kwargs):
            if _on:
                _check("load", ptrs, mask, ti._get_np_dtype(ptrs.get_element_ty()))
            return orig_load(self, ptrs, mask, other, *args, **kwargs)

        def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
            if _on:
                _check("store", ptrs, mask, ti._get_np_dtype(ptrs.get_element_ty()))
            return orig_store(self, ptrs, value, mask, *args, **kwargs)

        def call(self, *args, **kwargs):
            if not _on:
                return orig_call(self, *args, **kwargs)
            import torch

            tensors = []
            names = list(getattr(self, "arg_names", None) or [])
            for i, a in enumerate(args):
                tensors.append((names[i] if i < len(names) else f"#{i}", a))
            tensors += list(kwargs.items())
            ranges, cpu = [], True
            for name, t in tensors:
                if isinstance(t, torch.Tensor):
                    if t.device.type != "cpu":
                        cpu = False
                    r = _tensor_range(t)
                    if r is not None:
                        ranges.append((r[0], r[1], name))
            fn = getattr(self, "fn", None)
            launch = _Launch(getattr(fn, "__name__", "?"), ranges) if cpu else None  # CUDA args: copied, unchecked
            _frames().append(launch)
            try:
                return orig_call(self, *args, **kwargs)
            finally:
                _frames().pop()

        builder_cls.create_masked_load = create_masked_load
        builder_cls.create_masked_store = create_masked_store
        ti.GridExecutor.__call__ = call
        _installed = True


def enable() -> None:
    global _on
    _install()
    with _lock:
        _on += 1


def disable() -> None:
    global _on
    with _lock:
        _on = max(0, _on - 1)


def enabled() -> bool:
    return _on > 0


@contextlib.contextmanager
def memcheck():
    """Check every interpreted Triton load/store inside the block (see the module docstring)."""
    enable()
    try:
        yield
    finally:
        disable()


def enable_from_env() -> bool:
    """Turn the checker on for the whole process when ``PYDL_TRITON_MEMCHECK`` is a yes (1/true/yes/on, read
    like every PYDL_* switch: pydl/_env.py); returns whether it is on. A value that is no switch raises."""
    from pydl import _env

    if _env.flag("PYDL_TRITON_MEMCHECK") and not enabled():
        enable()
    return enabled()
