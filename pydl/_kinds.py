"""The vocabulary of backends: their names and the kinds of reason one cannot run an op.

A leaf module (no imports from pydl, no torch): pydl/backends.py, which chooses backends, builds on
pydl/_build.py, which builds them and says why a build failed, and pydl/_env.py checks environment
variables that name backends -- all three need these words, so they live below all three
(docs/ARCHITECTURE.md, "Layers and imports"). pydl.backends re-exports them: that is where users find them.
"""
from __future__ import annotations

import enum

BACKENDS = ("reference", "cpu", "cuda", "triton", "cuda_emu")
# cuda_emu runs the CUDA kernels, unchanged, on CPU tensors (csrc/emu/, docs/ARCHITECTURE.md "The CUDA
# emulator"): slow by design, a checker, never chosen by ``auto``.
NAMES = BACKENDS + ("auto",)


class Reason(enum.Enum):
    """Why a backend can or cannot run an op: a kind, so that decisions never parse message text.

    ``auto`` skips a backend silently only for :attr:`NO_KERNEL` (nothing was ever there to use); every other
    failure is something the user could fix -- a missing tool, a failed build, a damaged or read-only cache --
    and is worth one warning.
    """

    OK = "ok"
    NO_KERNEL = "no kernel"            # the op has no implementation for this backend
    WRONG_DEVICE = "wrong device"      # the backend does not run on tensors of this device type
    NO_DEVICE = "no device"            # e.g. no CUDA GPU here
    MISSING_TOOL = "missing tool"      # compiler, ninja, nvcc or Triton absent or unusable
    BUILD_FAILED = "build failed"      # the sources did not compile or link
    CACHE_READ_ONLY = "read-only cache"  # something had to be (re)built where nothing can be written
    LOAD_FAILED = "load failed"        # a built library would not load

    @property
    def failed(self) -> bool:
        """A failure auto should warn about (the backend exists but something here stops it)."""
        return self not in (Reason.OK, Reason.NO_KERNEL)
