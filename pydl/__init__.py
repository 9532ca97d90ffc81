"""pydl: hand-written PyTorch kernels you can read, run, check and beat.

    import pydl
    s = pydl.act_stats(x, bins=40, lo=0, hi=10)      # one pass: mean/std/min/max/near-zero/histogram
    with pydl.backend("triton"):                       # pick the kernels: reference, cpu, cuda, triton, auto
        ...

Importing pydl compiles nothing and does not import Triton; compiled backends build on first use
(``pydl build`` does it ahead of time, ``pydl doctor`` says what is usable and why not).
"""
from __future__ import annotations

import importlib

# kernels/ sits at the repository's top level and is installed as pydl.kernels (setup.py's package_dir). In a
# checkout -- run from its root, or installed editable in any mode -- pydl/kernels is a symbolic link to it,
# committed in git, so `import pydl.kernels` finds it like any subpackage: no import hook, no sys.modules edit.
from . import nn, ops
from ._version import __version__
from .backends import BACKENDS, backend, get_backend, set_backend
from .nn import convert
from .ops import (ActStats, act_stats, act_stats_reference, batch_norm, batch_norm_apply, batch_norm_backward_elemt,
                  batch_norm_backward_reduce, batch_norm_reference, batch_norm_stats, conv2d, conv2d_algo,
                  conv2d_backward_reference, conv2d_output_size, conv2d_reference, get_conv2d_algo, gru, gru_cell,
                  gru_reference, lstm, lstm_cell, lstm_reference, set_conv2d_algo)

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


__all__ = [
    "__version__", "BACKENDS", "backend", "get_backend", "set_backend", "convert", "nn", "ops",
    # the functional API, as pydl.ops exports it (tests/test_imports.py checks the two lists agree)
    "ActStats", "act_stats", "act_stats_reference",
    "batch_norm", "batch_norm_apply", "batch_norm_backward_elemt", "batch_norm_backward_reduce",
    "batch_norm_reference", "batch_norm_stats",
    "conv2d", "conv2d_algo", "conv2d_backward_reference", "conv2d_output_size", "conv2d_reference",
    "get_conv2d_algo", "set_conv2d_algo",
    "gru", "gru_cell", "gru_reference", "lstm", "lstm_cell", "lstm_reference",
]
