"""pydl: hand-written PyTorch kernels you can read, run, check and beat.

    import pydl
    s = pydl.act_stats(x, bins=40, lo=0, hi=10)      # one pass: mean/std/min/max/near-zero/histogram
    with pydl.backend("triton"):                       # pick the kernels: reference, cpu, cuda, triton, auto
        ...

Importing pydl compiles nothing and does not import Triton; compiled backends build on first use
(``pydl build`` does it ahead of time, ``pydl doctor`` says what is usable and why not).
"""
from __future__ import annotations

import importlib.util
import os
import sys

from ._version import __version__


def _source_tree_kernels() -> None:
    """kernels/ sits at the repository's top level and is installed as ``pydl.kernels``. When pydl runs
    straight from a source checkout (no install, e.g. on a GPU machine that cannot pip install), map it."""
    if "pydl.kernels" in sys.modules or importlib.util.find_spec(__name__ + ".kernels") is not None:
        return
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(src, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location(__name__ + ".kernels", init, submodule_search_locations=[src])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        # a module put into sys.modules by hand is not bound on its parent package; `pydl.kernels` must be
        setattr(sys.modules[__name__], "kernels", mod)


_source_tree_kernels()

from .backends import BACKENDS, backend, get_backend, set_backend  # noqa: E402
from . import ops  # noqa: E402
from .ops import *  # noqa: E402,F401,F403 - act_stats, batch_norm, conv2d, lstm, ... (functional API)
from . import nn  # noqa: E402
from .nn import convert  # noqa: E402

# The heavier subpackages load on first attribute access (PEP 562), so that `import pydl` stays light and yet
# `pydl.debug.ActivationStats`, `pydl.distributed.init_from_env()` or `pydl.learn` work after a plain
# `import pydl`, as the README writes them. `from pydl import debug` and `import pydl.debug` work as usual.
_LAZY_SUBMODULES = ("debug", "distributed", "learn", "kernels", "bench", "demo", "selftest", "cli")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = ["__version__", "BACKENDS", "backend", "get_backend", "set_backend", "convert", "nn", "ops"] + list(ops.__all__)
