"""pydl's kernel-writing course: from a vector add to pydl's own kernels, on a laptop without a GPU.

``pydl learn list | start | check | hint | solution | doctor`` (see :mod:`pydl.learn.cli`). Two tracks:

* **Triton** -- kernels run in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``) and compiled on a GPU;
* **CUDA C++** -- compiled with nvcc for the GPU, and compiled with g++ against pydl's CPU emulator of the CUDA
  execution model (``csrc/emu/cuda_emu.h``, see :mod:`pydl._emu`) so the logic can be checked without one.

The checker (:mod:`pydl.learn.checker`) runs the learner's code in a subprocess with a time limit, puts every
output between poisoned guard regions, and reports levels that are PASS, FAIL or SKIP -- never a skipped
level shown as passed. Exercises live in ``exercises/NN_name/`` (see :mod:`pydl.learn.course`).
"""
from .course import Exercise, Workspace, exercises, get

__all__ = ["Exercise", "Workspace", "exercises", "get"]
