"""A setting with a process-wide default and a ``with``-scoped override: how pydl's backend choice and the
CPU conv2d algorithm are chosen (``pydl.backend(...)``, ``pydl.conv2d_algo(...)``).

The override is a context variable, not a global, so two threads -- or two asyncio tasks -- can each run
their own ``with`` block without seeing the other's. The default may be given as a function: it is then read
on first use, not at import (a bad ``PYDL_BACKEND`` becomes a clear error from the first op rather than an
import failure), and read again on every use until it succeeds.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Generic, Iterator, Optional, TypeVar, Union

T = TypeVar("T")


class ScopedSetting(Generic[T]):
    def __init__(self, name: str, check: Callable[[T], T], default: Union[T, Callable[[], T]]):
        self._check = check
        self._default = default
        self._value: Optional[T] = None  # the process default once set or read
        self._scoped: contextvars.ContextVar[Optional[T]] = contextvars.ContextVar(name, default=None)

    def get(self) -> T:
        """The innermost ``with scope(...)`` value, else the process default."""
        scoped = self._scoped.get()
        if scoped is not None:
            return scoped
        if self._value is None:
            self._value = self._default() if callable(self._default) else self._default
        return self._value

    def set(self, value: T) -> None:
        """Set the process-wide default (checked first)."""
        self._value = self._check(value)

    def forget(self) -> None:
        """Drop the process default, so the next ``get`` reads the default afresh (tests)."""
        self._value = None

    @contextlib.contextmanager
    def scope(self, value: T) -> Iterator[T]:
        token = self._scoped.set(self._check(value))
        try:
            yield value
        finally:
            self._scoped.reset(token)
