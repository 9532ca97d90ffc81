"""Reading pydl's environment variables: one parser per kind of value, one error style.

Every ``PYDL_*`` variable pydl reads goes through these helpers so that they all behave alike:

* an empty value (``PYDL_BACKEND=``) means *unset* -- shells and CI templates produce empty assignments, and
  the default is what such a line almost always means;
* surrounding whitespace is ignored (``"cpu "`` from a sloppy ``export``);
* a value that is not understood is never guessed at nor silently ignored: it raises a ValueError naming
  the variable, the value and the accepted values, so the user knows which line of which script to fix.
  A switch read while ``import pydl`` runs (``strict=False``) warns with the same message and takes its
  default instead: an error there would stop even ``pydl doctor``, which lists every invalid variable.

This module imports nothing beyond the standard library: setup.py loads it by path, before torch exists.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, List, Optional, Sequence

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def raw(name: str) -> Optional[str]:
    """The variable's value with whitespace stripped, or None when it is unset or empty."""
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def flag(name: str, default: bool = False, strict: bool = True) -> bool:
    """A yes/no switch: 1/true/yes/on or 0/false/no/off (any case); unset or empty gives ``default``.
    Anything else raises, or with ``strict=False`` warns and gives ``default``."""
    value = raw(name)
    if value is None:
        return default
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    msg = (f"environment variable {name}={value!r} is not a yes/no switch: use one of {', '.join(_TRUE)} (on) "
           f"or {', '.join(_FALSE)} (off), or leave it unset (default: {'on' if default else 'off'})")
    if strict:
        raise ValueError(msg)
    import warnings

    warnings.warn(f"pydl: {msg}; using the default", RuntimeWarning, stacklevel=3)
    return default


def choice(name: str, choices: Sequence[str], default: str) -> str:
    """One of ``choices`` (exact spelling); unset or empty gives ``default``."""
    value = raw(name)
    if value is None:
        return default
    if value not in choices:
        raise ValueError(f"environment variable {name}={value!r} is not one of {', '.join(choices)}; "
                         f"leave it unset or empty for the default ({default})")
    return value


def positive_int(name: str, default: int) -> int:
    """A whole number >= 1; unset or empty gives ``default``."""
    value = raw(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number >= 1; leave it unset "
                         f"or empty for the default ({default})")
    return n


def names(name: str, allowed: Iterable[str]) -> List[str]:
    """A comma-separated list whose items are each one of ``allowed`` (empty items are skipped)."""
    value = raw(name)
    if value is None:
        return []
    allowed = list(allowed)
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(f"environment variable {name}={value!r}: {', '.join(map(repr, bad))} not understood; "
                         f"each comma-separated item must be one of {', '.join(allowed)}")
    return items


def required_backends(name: str = "PYDL_REQUIRE_BACKENDS") -> List[str]:
    """Backends that must be usable here (tests fail instead of skipping): comma-separated ``name`` (on any
    device) or ``name@device`` items, e.g. ``cpu,triton`` or ``cpu,cuda,triton@cuda``."""
    from ._kinds import BACKENDS  # here, not at the top: setup.py loads this file alone

    return names(name, list(BACKENDS) + [f"{b}@{d}" for b in BACKENDS for d in ("cpu", "cuda")])


# One CUDA architecture as nvcc and torch spell it: major.minor, optionally with a feature suffix
# ("9.0a" for Hopper's wgmma) and/or "+PTX" (also embed PTX for newer GPUs to JIT).
_ARCH = re.compile(r"^\d+\.\d+[af]?(\+PTX)?$")


def cuda_archs(name: str) -> Optional[str]:
    """A CUDA architecture list such as ``8.0;9.0`` or ``8.0 9.0+PTX``, normalised to ``;``-separated;
    None when unset or empty."""
    value = raw(name)
    if value is None:
        return None
    archs = [a for a in re.split(r"[;\s]+", value) if a]
    bad = [a for a in archs if not _ARCH.match(a)]
    if bad:
        raise ValueError(f"environment variable {name}={value!r}: {', '.join(map(repr, bad))} is not a CUDA "
                         "architecture; write major.minor entries separated by ';' or spaces, e.g. '8.0;9.0' "
                         "(a '+PTX' suffix adds PTX)")
    return ";".join(archs)


def path(name: str) -> Optional[str]:
    """A filesystem path (``~`` expanded); None when unset or empty."""
    value = raw(name)
    return os.path.expanduser(value) if value is not None else None
