"""Where pydl's files are: the package, its ahead-of-time build folder and the C++/CUDA sources.

A leaf module: the builder (pydl/_build.py) and the emulator's source rewrite (pydl/_emu.py, which the
builder uses) both need the sources' place.
"""
from __future__ import annotations

import os
from typing import Optional

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
#: where ``PYDL_BUILD_EXT=1 pip install`` puts the compiled libraries (setup.py), and where loading looks first
AOT_DIR = os.path.join(PKG_DIR, "_ext")


def find_csrc() -> Optional[str]:
    """The C++/CUDA source folder: the source tree's csrc/ (a checkout, an editable install) or the copy a
    wheel ships as pydl/_csrc; None when neither is there."""
    for cand in (os.path.join(os.path.dirname(PKG_DIR), "csrc"), os.path.join(PKG_DIR, "_csrc")):
        if os.path.isdir(os.path.join(cand, "cpu")):
            return cand
    return None
