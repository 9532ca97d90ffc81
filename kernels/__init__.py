"""pydl's Triton kernels, one module per op (installed as ``pydl.kernels``).

Import them lazily: ``import pydl`` does not import Triton. Every kernel here is decorated with
:func:`pydl.kernels._jit.jit`, which runs CUDA tensors through Triton's compiler and CPU tensors through
Triton's interpreter in the same process (see that module for why this needs care).
"""
