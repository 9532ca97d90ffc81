"""``conv2d``: 2-D convolution, forward and backward, with an optional fused bias + activation epilogue.

(Why one long file: the op's contract, its reference, its backends, its autograd and its algorithm switch
are one vertical slice, as for every op; most of the length is the math written out for the course.)

The op (``torch.ops.pydl.conv2d``) computes, for every group g, output channel o of that group and output
pixel (ho, wo)::

    z[n, o, ho, wo] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, g*Cg + c, ho*sh - ph + i*dh, wo*sw - pw + j*dw]
    y = act(z)                       (act: "none", "relu" or "general_relu", see pydl/ops/_activation.py)

with zero padding (taps that land outside the input read 0). That is one matrix product per group -- the
"implicit GEMM" view every backend uses:

    M = N*Ho*Wo output pixels,  N = Cout/groups output channels,  K = Cin/groups * kh * kw taps
    A[m, k] = the input value tap k of pixel m reads (the im2col matrix, never materialised on the GPU)
    B[k, o] = w[o, k]  (the weight, viewed as (Cout, K))

The backward is two more such products (and a sum), each hand-written in every fast backend:

    grad_b[o]    = sum over (n, ho, wo) of dz                           (dz = dL/dz, the act's backward of dy)
    grad_w[o, k] = sum over pixels m of dz[m, o] * A[m, k]             (M = Cout/g, N = K, K = N*Ho*Wo)
    grad_x       = col2im(dz @ B^T): each tap's contribution scattered back to the pixel it read
                   (the Triton/CUDA kernels *gather* instead -- each input pixel sums the outputs that read
                   it -- so no two programs write one element and no atomics are needed).

**Fused activation backward.** dz needs the pre-activation z (relu'(z) = [z > 0]). Choices:

* ``relu``: the output is enough: y = max(z, 0) > 0 exactly when z > 0, so y is saved and stands in for z;
* ``general_relu``: y = min(leaky(z) - sub, maxv) loses information (the clamp, and z - sub rounding away a
  tiny z), so the forward *also writes z* -- the op's second output -- when a gradient will be needed
  (``save_preact``). One extra output-sized write in training, none in inference. If it was not saved
  (someone called the op directly with save_preact=False), the backward recomputes z with one extra forward
  conv: correct, just slower.

Padding ``"same"``/``"valid"`` and ``padding_mode`` other than zeros are resolved in Python before the op
(as torch.nn.Conv2d does): the op itself only knows symmetric zero padding. The rare asymmetric "same"
(even effective kernel) pads the extra row/column explicitly first.

**Layouts and dtypes.** NCHW and channels_last inputs are read in place; the output has x's memory format
(channels_last in, channels_last out, like torch). fp32/fp64 accumulate in their own precision, fp16/bf16
in fp32. fp32 is exact fp32 everywhere (no TF32) unless ``PYDL_CONV_TF32=1`` / ``ALLOW_TF32 = True`` is set,
which lets the GPU backends use TF32 tensor cores (10-bit mantissa inputs: ~1e-3 relative error).

**Algorithm (CPU backend).** 3x3 stride-1 convolutions (one group, dilation 1, fp32/fp64) may run as
Winograd F(4x4, 3x3) (csrc/cpu/conv2d/winograd.cpp): 4x fewer multiplies, at the price of a rounding error
1-2 orders of magnitude above the direct conv's (bound and measurements next to the kernel). The choice is
``algo``: ``"auto"`` (Winograd where the crossover table next to the kernel says it wins), ``"direct"``
(never), ``"winograd"`` (wherever it applies; other shapes and fp16/bf16 run direct). Set per call
(``pydl.conv2d(..., algo=)``), per module (``pydl.nn.Conv2d.algo``), per block (``with
pydl.conv2d_algo("direct"):``, a context variable like ``pydl.backend``) or per process
(``pydl.set_conv2d_algo``), as ``torch.backends.cudnn`` flags do for cuDNN. The setting in force at the
forward also runs its backward (grad-input is the same algorithm on the flipped filter). It is a setting
rather than an op argument so that the op's schema, and every other backend, stay as they are; the other
backends ignore it. Both algorithms are deterministic (fixed summation order, no atomics), so
``torch.use_deterministic_algorithms(True)`` allows either.

**Second derivatives.** ``pydl::conv2d_backward`` has its own autograd (derived next to
``_double_backward``), built from conv2d and conv2d_backward themselves, so gradient penalties,
Hessian-vector products and gradgradcheck work on every backend, to any order.

**Non-finite values** behave as in torch: NaN in, NaN out (the fused relu does not turn NaN into 0, nor the
clamp into maxv); at a NaN pre-activation relu's gradient passes and a clamp's stops, as torch's formulas.

**Where pydl differs from torch.nn.functional.conv2d, deliberately** (everything else gives torch's answer):

* dtypes: float16, bfloat16, float32 and float64 only (torch also convolves complex tensors): TypeError.
* argument errors are ValueError/TypeError naming the argument (torch: RuntimeError, or its argument
  parser's signature list); the refused set is torch's: a float or bool stride/padding/dilation/groups, a
  non-positive stride/dilation/groups, negative padding, a kernel larger than the padded input,
  padding='same' with a stride, an empty weight (0 out channels or a 0 kernel size).
* An input with 0 channels returns torch's result, an empty (N, 0, Ho, Wo) tensor (not N x Cout of bias),
  with zero gradients; the bias gradient is zeros. Not a divergence, but surprising: written here.
* The op itself (``torch.ops.pydl.conv2d``) takes symmetric zero padding only; the public function resolves
  "same"/"valid" and padding_mode before it, as torch.nn.Conv2d does.
* The triton backend on CPU tensors runs in Triton's interpreter (tests and learning), which converts
  bfloat16 subnormal values to and from float32 wrongly (it also truncates instead of rounding when it
  narrows fp32 to bf16: a 1-ulp difference). A GPU does both conversions in hardware, correctly.
* With ``PYDL_CONV_TF32=1`` fp32 convolutions on a GPU round their inputs to TF32 (torch's
  ``allow_tf32`` flag is not consulted: pydl's switch is its own).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import ContextManager, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .. import _env, backends
from .._layout import acc_dtype, out_memory_format
from .._setting import ScopedSetting
from . import _activation
from ._common import LIB, check_floating, compiled

__all__ = ["conv2d", "conv2d_reference", "conv2d_backward_reference", "conv2d_output_size", "conv2d_algo",
           "set_conv2d_algo", "get_conv2d_algo"]

# GPU backends: use TF32 tensor cores for float32 inputs. Off by default: exact fp32, like the CPU.
ALLOW_TF32 = _env.flag("PYDL_CONV_TF32", strict=False)  # read at import: a bad value warns (and doctor flags it)

LIB.define("conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation, int groups, "
           "str act, float leak, float sub, float maxv, bool save_preact, str backend) -> (Tensor, Tensor)")
LIB.define("conv2d_backward(Tensor grad_y, Tensor x, Tensor w, Tensor? z, int[2] stride, int[2] padding, "
           "int[2] dilation, int groups, str act, float leak, float sub, float maxv, bool[3] output_mask, "
           "str backend) -> (Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------------------------------
# Argument checks (shared by the op, its fake and its backward)
# --------------------------------------------------------------------------------------------------

def conv2d_output_size(h: int, w: int, kh: int, kw: int, stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int]) -> Tuple[int, int]:
    """(Ho, Wo) = floor((H + 2p - d*(k-1) - 1) / s) + 1 per dimension (may be <= 0: the caller checks)."""
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def _int(v, name: str, accepted: str) -> int:
    """A plain int from an int-like (Python or numpy integer, as torch accepts); floats and bools refused
    (torch refuses them too: a stride of 1.5 has no meaning, and True is almost always a slip)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"pydl.conv2d: {name} must be {accepted}, got {v!r} ({type(v).__name__})")
    return int(v)


def _pair(v, name: str, accepted: str = "an int or a pair of ints"):
    """stride / padding / dilation as [a, b]: an int is used for both dimensions, so is a 1-element sequence
    (as F.conv2d allows)."""
    if isinstance(v, (str, bytes)) or not isinstance(v, (numbers.Integral, Sequence)):
        raise TypeError(f"pydl.conv2d: {name} must be {accepted}, got {v!r} ({type(v).__name__})")
    if not isinstance(v, Sequence):
        return [_int(v, name, accepted)] * 2
    if len(v) not in (1, 2):
        raise ValueError(f"pydl.conv2d: {name} must be {accepted}, got {len(v)} entries: {list(v)!r}")
    v = [_int(i, name, accepted) for i in v]
    return v * 2 if len(v) == 1 else v


def _check_ranges(stride, padding, dilation) -> None:
    if min(stride) < 1:
        raise ValueError(f"pydl.conv2d: stride must be >= 1, got {list(stride)}")
    if min(dilation) < 1:
        raise ValueError(f"pydl.conv2d: dilation must be >= 1, got {list(dilation)}")
    if min(padding) < 0:
        raise ValueError(f"pydl.conv2d: padding must be >= 0, got {list(padding)}")


def check_args(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv) -> Tuple[int, int]:
    """Validate; returns (Ho, Wo). Errors name the argument and what was expected."""
    check_floating(x, "conv2d", "x")
    check_floating(w, "conv2d", "weight")
    if x.dim() != 4:
        raise ValueError(f"pydl.conv2d: x must be 4-D (N, C, H, W), got rank {x.dim()} with shape {tuple(x.shape)}")
    if w.dim() != 4:
        raise ValueError(f"pydl.conv2d: weight must be 4-D (Cout, Cin/groups, kh, kw), got shape {tuple(w.shape)}")
    if w.dtype != x.dtype:
        raise TypeError(f"pydl.conv2d: weight dtype {w.dtype} does not match x dtype {x.dtype}")
    if w.device != x.device:
        raise ValueError(f"pydl.conv2d: weight is on {w.device} but x is on {x.device}")
    for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if len(v) != 2:
            raise ValueError(f"pydl.conv2d: {name} must have 2 entries (height, width), got {list(v)!r}")
    _check_ranges(stride, padding, dilation)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"pydl.conv2d: groups must be a positive int, got {groups!r} ({type(groups).__name__})")
    if groups < 1:
        raise ValueError(f"pydl.conv2d: groups must be a positive int, got {groups}")
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    if C % groups:
        raise ValueError(f"pydl.conv2d: in_channels (x.shape[1] = {C}) must be divisible by groups = {groups}")
    if Co % groups:
        raise ValueError(f"pydl.conv2d: out_channels (weight.shape[0] = {Co}) must be divisible by groups = {groups}")
    if Cg * groups != C:
        raise ValueError(f"pydl.conv2d: weight expects {Cg * groups} input channels (weight.shape[1] = {Cg} x "
                         f"groups = {groups}) but x has {C}")
    if Co == 0 or kh == 0 or kw == 0:
        raise ValueError(f"pydl.conv2d: weight must have nonzero out_channels and kernel sizes, got shape "
                         f"{tuple(w.shape)}")
    if b is not None:
        check_floating(b, "conv2d", "bias")
        if b.dtype != x.dtype:
            raise TypeError(f"pydl.conv2d: bias dtype {b.dtype} does not match x dtype {x.dtype}")
        if b.device != x.device:
            raise ValueError(f"pydl.conv2d: bias is on {b.device} but x is on {x.device}")
        if tuple(b.shape) != (Co,):
            raise ValueError(f"pydl.conv2d: bias must have shape ({Co},) (out_channels), got {tuple(b.shape)}")
    _activation.check_act(act, leak, sub, maxv, "conv2d")
    ho, wo = conv2d_output_size(H, W, kh, kw, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"pydl.conv2d: the weight's kernel size ({kh}, {kw}) with dilation {list(dilation)} is "
                         f"larger than the padded input ({H + 2 * padding[0]}, {W + 2 * padding[1]})")
    return ho, wo


# --------------------------------------------------------------------------------------------------
# reference: plain PyTorch, written to be read (im2col with F.unfold, one matmul per group, col2im with F.fold)
# --------------------------------------------------------------------------------------------------

def _im2col(x, kh, kw, stride, padding, dilation, groups):
    """(N, groups, Cg*kh*kw, Ho*Wo): column l holds the taps output pixel l reads, in w's (c, i, j) order."""
    N, C = x.shape[:2]
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    return cols.view(N, groups, (C // groups) * kh * kw, cols.shape[-1])


def conv2d_reference(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], groups: int, act: str, leak: float, sub: float,
                     maxv: float, save_preact: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    acc = acc_dtype(x.dtype)
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    ho, wo = conv2d_output_size(H, W, kh, kw, stride, padding, dilation)
    cols = _im2col(x.to(acc), kh, kw, stride, padding, dilation, groups)        # (N, G, K, L)
    wg = w.to(acc).reshape(groups, Co // groups, Cg * kh * kw)                  # (G, Co/G, K)
    z = torch.matmul(wg, cols).reshape(N, Co, ho, wo)                            # (N, G, Co/G, L) -> NCHW
    if b is not None:
        z = z + b.to(acc).view(1, Co, 1, 1)
    y = _activation.apply(z, act, leak, sub, maxv)
    fmt = out_memory_format(x)
    y = y.to(x.dtype).contiguous(memory_format=fmt)
    keep = act == "general_relu" and save_preact
    z_out = z.to(x.dtype).contiguous(memory_format=fmt) if keep else x.new_empty((0,))
    return y, z_out


def conv2d_backward_reference(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, z: Optional[torch.Tensor],
                              stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                              act: str, leak: float, sub: float, maxv: float,
                              output_mask: Sequence[bool]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = acc_dtype(x.dtype)
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    dz = grad_y.to(acc)
    if act != "none":
        dz = _activation.grad(dz, z.to(acc), act, leak, sub, maxv)
    L = dz.shape[2] * dz.shape[3]
    dzg = dz.reshape(N, groups, Co // groups, L)                                 # (N, G, Co/G, L)
    gx = gw = gb = None
    if output_mask[0]:
        wg = w.to(acc).reshape(groups, Co // groups, Cg * kh * kw)
        gcols = torch.matmul(wg.transpose(1, 2), dzg).reshape(N, C * kh * kw, L)   # (N, G*K, L)
        gx = F.fold(gcols, (H, W), (kh, kw), dilation=dilation, padding=padding, stride=stride)
        gx = gx.to(x.dtype).contiguous(memory_format=out_memory_format(x))
    if output_mask[1]:
        cols = _im2col(x.to(acc), kh, kw, stride, padding, dilation, groups)
        gw = torch.matmul(dzg, cols.transpose(2, 3)).sum(0).reshape(w.shape).to(w.dtype)
    if output_mask[2]:
        gb = dz.sum((0, 2, 3)).to(x.dtype)
    empty = x.new_empty((0,))
    return (empty if gx is None else gx, empty if gw is None else gw, empty if gb is None else gb)


# --------------------------------------------------------------------------------------------------
# Backend tables, dispatcher kernels, fakes, autograd
# --------------------------------------------------------------------------------------------------

def _triton(name: str):
    """The Triton launcher takes the TF32 switch as a keyword, read per call (the kernels sit below this
    module and never read its globals)."""
    def loader():
        from ..kernels import conv2d as k

        fn = getattr(k, f"{name}_triton")
        return lambda *args: fn(*args, allow_tf32=ALLOW_TF32)

    return loader


def _cuda(name: str, namespace: str = "pydl_cuda"):
    """The compiled CUDA op takes one more argument than the other backends: the TF32 switch, read per call."""
    load = compiled(namespace, name)

    def loader():
        fn = load()
        return lambda *args: fn(*args, ALLOW_TF32)

    return loader


# --------------------------------------------------------------------------------------------------
# The CPU algorithm switch (see the module docstring): Python owns the setting; the CPU loader hands it to
# the C++ kernel (a thread-local there) right before each call, from the thread that makes the call.
# --------------------------------------------------------------------------------------------------

ALGOS = ("auto", "direct", "winograd")  # the codes the C++ side takes: their index


def _check_algo(algo) -> str:
    if not isinstance(algo, str) or algo not in ALGOS:
        raise ValueError(f"pydl.conv2d: algo must be one of {ALGOS}, got {algo!r}")
    return algo


ALGO_SETTING: ScopedSetting[str] = ScopedSetting("pydl_conv2d_algo", _check_algo, "auto")


def set_conv2d_algo(algo: str) -> None:
    """Set the process-wide default CPU conv2d algorithm: "auto", "direct" or "winograd"."""
    ALGO_SETTING.set(algo)


def get_conv2d_algo() -> str:
    """The algorithm a CPU conv2d uses here: the innermost ``with conv2d_algo(...)``, else the process default."""
    return ALGO_SETTING.get()


def conv2d_algo(algo: str) -> ContextManager[str]:
    """``with pydl.conv2d_algo("direct"): ...``: CPU convolutions inside use that algorithm (thread- and
    asyncio-safe: a context variable). ``"winograd"`` applies to 3x3 stride-1 convs (one group, dilation 1,
    fp32/fp64) and leaves the rest on the direct path; ``"auto"`` picks per shape."""
    return ALGO_SETTING.scope(algo)


def _cpu(name: str):
    """The compiled CPU op, preceded by handing it this thread's algorithm setting."""
    load = compiled("pydl_cpu", name)

    def loader():
        fn, set_algo = load(), torch.ops.pydl_cpu.conv2d_set_algo.default

        def run(*args):
            set_algo(ALGOS.index(get_conv2d_algo()))
            return fn(*args)

        return run

    return loader


OP = backends.register_op(backends.Op("conv2d", {
    "reference": lambda: conv2d_reference,
    "cpu": _cpu("conv2d"),
    "cuda": _cuda("conv2d"),
    "triton": _triton("conv2d"),
    "cuda_emu": _cuda("conv2d", "pydl_cuda_emu"),
}))

# The backward op is its own Op, registered like every other, so `auto` resolves it independently and
# reset_caches(), `pydl doctor` and the fallback warning see it under its own name; its compiled kernels
# live in the forward's sources (csrc/<device>/conv2d.cpp defines both), hence build_unit.
OP_BWD = backends.register_op(backends.Op("conv2d_backward", {
    "reference": lambda: conv2d_backward_reference,
    "cpu": _cpu("conv2d_backward"),
    "cuda": _cuda("conv2d_backward"),
    "triton": _triton("conv2d_backward"),
    "cuda_emu": _cuda("conv2d_backward", "pydl_cuda_emu"),
}, build_unit="conv2d"))


def out_channels(x: torch.Tensor, w: torch.Tensor) -> int:
    """The output's channel count: Cout -- except for an input with 0 channels, where torch.nn.functional.conv2d
    returns an empty (N, 0, Ho, Wo) tensor (no bias added: there is nothing to add it to). pydl gives the
    same answer on every backend, and the bias gradient is then zeros."""
    return w.shape[0] if x.shape[1] > 0 else 0


def _empty_input_outputs(x, ho, wo, keep_z):
    """The forward's (y, z) for an input with 0 channels (see out_channels); z is y-shaped when it is kept,
    as for any other input (the backward checks its shape)."""
    y = x.new_empty((x.shape[0], 0, ho, wo)).contiguous(memory_format=out_memory_format(x))
    return y, (torch.empty_like(y) if keep_z else x.new_empty((0,)))


def _kernel(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, backend):
    ho, wo = check_args(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv)
    if x.shape[1] == 0:
        return _empty_input_outputs(x, ho, wo, act == "general_relu" and save_preact)
    return OP(backend, x.device.type, x, w, b, list(stride), list(padding), list(dilation), groups, act,
              leak, sub, maxv, save_preact)


def check_backward_args(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv) -> None:
    """The backward op is public (torch.ops.pydl.conv2d_backward): every tensor it reads is checked against
    the shapes the forward would have produced, so a mismatch is an error, never an out-of-bounds read."""
    ho, wo = check_args(x, w, None, stride, padding, dilation, groups, act, leak, sub, maxv)
    want = (x.shape[0], out_channels(x, w), ho, wo)
    for name, t in (("grad_y", grad_y), ("z", z)):
        if t is None:
            continue
        check_floating(t, "conv2d_backward", name)
        if t.dtype != x.dtype:
            raise TypeError(f"pydl.conv2d_backward: {name} dtype {t.dtype} does not match x dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"pydl.conv2d_backward: {name} is on {t.device} but x is on {x.device}")
    if tuple(grad_y.shape) != want:
        raise ValueError(f"pydl.conv2d_backward: grad_y must have shape {want} (the output's: N, out_channels, "
                         f"Ho, Wo), got {tuple(grad_y.shape)}")
    if act != "none" and (z is None or tuple(z.shape) != want):
        got = "None" if z is None else tuple(z.shape)
        raise ValueError(f"pydl.conv2d_backward: act={act!r} needs z (the pre-activation, or y for relu) of "
                         f"shape {want}, got {got}")


def _kernel_bwd(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask, backend):
    check_backward_args(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv)
    if x.shape[1] == 0:  # nothing reads anything: zero gradients of the right shapes (the bias's is zeros)
        gx = torch.zeros_like(x, memory_format=out_memory_format(x)) if output_mask[0] else x.new_empty((0,))
        gw = torch.zeros_like(w) if output_mask[1] else x.new_empty((0,))
        gb = x.new_zeros((w.shape[0],)) if output_mask[2] else x.new_empty((0,))
        return gx, gw, gb
    return OP_BWD(backend, x.device.type, grad_y, x, w, z, list(stride), list(padding), list(dilation), groups,
                  act, leak, sub, maxv, list(output_mask))


for _key in ("CPU", "CUDA"):
    LIB.impl("conv2d", _kernel, _key)
    LIB.impl("conv2d_backward", _kernel_bwd, _key)


@torch.library.register_fake("pydl::conv2d")
def _fake(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, backend):
    ho, wo = check_args(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv)
    if x.shape[1] == 0:
        return _empty_input_outputs(x, ho, wo, act == "general_relu" and save_preact)
    fmt = out_memory_format(x)
    y = x.new_empty((x.shape[0], w.shape[0], ho, wo)).contiguous(memory_format=fmt)
    z = torch.empty_like(y) if (act == "general_relu" and save_preact) else x.new_empty((0,))
    return y, z


@torch.library.register_fake("pydl::conv2d_backward")
def _fake_bwd(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask, backend):
    check_backward_args(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv)
    gx = x.new_empty(x.shape).contiguous(memory_format=out_memory_format(x)) if output_mask[0] else x.new_empty((0,))
    gw = w.new_empty(w.shape) if output_mask[1] else x.new_empty((0,))
    gb = x.new_empty((w.shape[0],)) if output_mask[2] else x.new_empty((0,))
    return gx, gw, gb


def _setup_context(ctx, inputs, output):
    x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, backend = inputs
    y, z = output
    # What the activation's backward reads in place of z: nothing (none), y (relu: y > 0 <=> z > 0), or z.
    if act == "relu":
        saved = y
    elif act == "general_relu" and z.shape == y.shape:
        saved = z
    else:
        saved = None
    ctx.save_for_backward(x, w, b, saved)
    ctx.args = (list(stride), list(padding), list(dilation), groups, act, leak, sub, maxv, backend)
    ctx.has_bias = b is not None
    ctx.algo = get_conv2d_algo()  # the backward runs with the forward's algorithm
    ctx.mark_non_differentiable(z)  # z is a saved intermediate, not a result anyone differentiates


def _backward(ctx, grad_y, grad_z):
    x, w, b, saved = ctx.saved_tensors
    stride, padding, dilation, groups, act, leak, sub, maxv, backend = ctx.args
    with conv2d_algo(ctx.algo):
        if act == "general_relu" and saved is None:
            # z was not kept: recompute it (one more forward conv, no activation)
            saved = torch.ops.pydl.conv2d(x, w, b, stride, padding, dilation, groups, "none", 0.0, 0.0, math.inf,
                                          False, backend)[0]
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.pydl.conv2d_backward(grad_y.contiguous(memory_format=out_memory_format(grad_y)), x,
                                                    w, saved, stride, padding, dilation, groups, act, leak, sub,
                                                    maxv, mask, backend)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None, None, None, None, None)


torch.library.register_autograd("pydl::conv2d", _backward, setup_context=_setup_context)


# Double backward (gradient penalties, Hessian-vector products, gradgradcheck). Without it autograd would
# treat conv2d_backward's outputs as constants and a second derivative would silently be zero. It needs no
# new kernel: the backward of the backward is made of the same two ops, so it runs on whichever backend the
# first one did (and is itself differentiable, to any order).
#
# With dz = act'(z) * grad_y and B(x, w, dz) = <dz, conv(x, w)> (conv without bias), the first backward's
# outputs are gx = dB/dx, gw = dB/dw and gb = sum(dz). B is linear in x and in w, so the incoming
# gradients ggx, ggw, ggb pair with them as
#
#     <ggx, gx> + <ggw, gw> + <ggb, gb> = B(ggx, w, dz) + B(x, ggw, dz) + <dz, ggb>
#                                       = <dz, conv(ggx, w) + conv(x, ggw) + ggb>
#
# and differentiating that scalar gives
#
#     d/d grad_y = act'(z) * (conv(ggx, w) + conv(x, ggw) + ggb)    two forward convs (ggb as their bias)
#     d/dx       = dB/dx with weight ggw                            conv2d_backward's input gradient
#     d/dw       = dB/dw with input ggx                             conv2d_backward's weight gradient
#     d/dz       = 0: act' of relu / general_relu is piecewise constant (its derivative is 0 almost
#                  everywhere), exactly what torch's own threshold_backward gives.
#
# The two conv2d_backward calls receive grad_y and z, so they apply act' themselves.

def _setup_backward_context(ctx, inputs, output):
    grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask, backend = inputs
    ctx.save_for_backward(grad_y, x, w, z)
    ctx.args = (list(stride), list(padding), list(dilation), groups, act, leak, sub, maxv, backend)
    ctx.output_mask = list(output_mask)
    ctx.algo = get_conv2d_algo()


def _double_backward(ctx, ggx, ggw, ggb):
    with conv2d_algo(ctx.algo):
        return _double_backward_impl(ctx, ggx, ggw, ggb)


def _double_backward_impl(ctx, ggx, ggw, ggb):
    grad_y, x, w, z = ctx.saved_tensors
    stride, padding, dilation, groups, act, leak, sub, maxv, backend = ctx.args
    geom = (stride, padding, dilation, groups)
    act_args = (act, leak, sub, maxv)
    none = (None,) * 11
    if x.shape[1] == 0:  # every output was a constant (zeros): nothing depends on the inputs
        return (None, None, None) + none

    def given(g, i, numel):
        # an output the first backward did not compute (mask off) is a 0-element placeholder: no gradient
        return g if ctx.output_mask[i] and g is not None and g.numel() == numel and numel > 0 else None

    ggx, ggw, ggb = given(ggx, 0, x.numel()), given(ggw, 1, w.numel()), given(ggb, 2, w.shape[0])
    need_gy, need_x, need_w = ctx.needs_input_grad[:3]
    d_gy = d_x = d_w = None
    if need_x and ggw is not None:
        d_x = torch.ops.pydl.conv2d_backward(grad_y, x, ggw, z, *geom, *act_args, [True, False, False], backend)[0]
    if need_w and ggx is not None:
        d_w = torch.ops.pydl.conv2d_backward(grad_y, ggx, w, z, *geom, *act_args, [False, True, False], backend)[1]
    if need_gy and (ggx is not None or ggw is not None or ggb is not None):
        plain = ("none", 0.0, 0.0, math.inf, False, backend)
        v = None
        if ggx is not None:
            v = torch.ops.pydl.conv2d(ggx, w, ggb, *geom, *plain)[0]
        if ggw is not None:
            t = torch.ops.pydl.conv2d(x, ggw, ggb if v is None else None, *geom, *plain)[0]
            v = t if v is None else v + t
        if v is None:
            v = ggb.view(1, -1, 1, 1).expand(grad_y.shape)
        d_gy = _activation.grad(v, z, *act_args)
    return (d_gy, d_x, d_w) + none


torch.library.register_autograd("pydl::conv2d_backward", _double_backward, setup_context=_setup_backward_context)


# --------------------------------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------------------------------

def _same_padding(k: int, d: int) -> Tuple[int, int]:
    """(before, after) zero padding that keeps the size at stride 1; after gets the odd one out, as torch."""
    total = d * (k - 1)
    return total // 2, total - total // 2


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: Union[int, Sequence[int]] = 1, padding: Union[int, Sequence[int], str] = 0,
           dilation: Union[int, Sequence[int]] = 1, groups: int = 1, padding_mode: str = "zeros",
           act: str = "none", leak: Optional[float] = None, sub: Optional[float] = None,
           maxv: Optional[float] = None, backend: Optional[str] = None, algo: Optional[str] = None) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` (plus torch.nn.Conv2d's ``padding_mode``) with an optional fused
    activation: ``act`` = ``"none"``, ``"relu"`` or ``"general_relu"`` (``leak``, ``sub``, ``maxv`` as fastai's
    GeneralRelu). ``x`` is (N, C, H, W) or unbatched (C, H, W). ``backend``: reference, cpu, cuda, triton, auto
    (default: the current :func:`pydl.backend`). ``algo``: the CPU backend's algorithm for this call, "auto",
    "direct" or "winograd" (default: the current :func:`conv2d_algo`)."""
    if algo is not None:
        with conv2d_algo(algo):
            return conv2d(x, weight, bias, stride, padding, dilation, groups, padding_mode, act, leak, sub, maxv,
                          backend)
    name = backends.get_backend() if backend is None else backend
    if not isinstance(name, str):
        raise TypeError(f"pydl.conv2d: backend must be one of {backends.NAMES} or None, got {name!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pydl.conv2d: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"pydl.conv2d: weight must be a torch.Tensor, got {type(weight).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"pydl.conv2d: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    groups = _int(groups, "groups", "a positive int")
    if not isinstance(act, str):
        raise TypeError(f"pydl.conv2d: act must be one of {_activation.ACTIVATIONS}, got {act!r}")
    for arg, v in (("leak", leak), ("sub", sub), ("maxv", maxv)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise TypeError(f"pydl.conv2d: {arg} must be a float or None, got {v!r} ({type(v).__name__})")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"pydl.conv2d: x must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"pydl.conv2d: weight must be 4-D (Cout, Cin/groups, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    kh, kw = weight.shape[2], weight.shape[3]
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0, 0, 0, 0]  # top, bottom, left, right
        elif padding == "same":
            if stride != [1, 1]:
                raise ValueError("pydl.conv2d: padding='same' is not supported for strided convolutions")
            (t, bo), (le, r) = _same_padding(kh, dilation[0]), _same_padding(kw, dilation[1])
            pads = [t, bo, le, r]
        else:
            raise ValueError(f"pydl.conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        p = _pair(padding, "padding", "an int, a pair of ints, 'same' or 'valid'")
        pads = [p[0], p[0], p[1], p[1]]
    # before F.pad below reads them: a negative pad would crop there instead of being refused
    _check_ranges(stride, pads, dilation)
    if not isinstance(padding_mode, str) or padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        raise ValueError(f"pydl.conv2d: padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', "
                         f"got {padding_mode!r}")
    if padding_mode != "zeros" and any(pads):
        # torch.nn.Conv2d does the same: pad with the mode first, then convolve without padding
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]), mode=padding_mode)
        pads = [0, 0, 0, 0]
    elif pads[0] != pads[1] or pads[2] != pads[3]:
        # asymmetric "same": zero-pad the extra row/column, then convolve with the symmetric part
        x = F.pad(x, (0, pads[3] - pads[2], 0, pads[1] - pads[0]))
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        # autocast lists conv2d as a lower-precision op: run it in the autocast dtype, as F.conv2d does
        dt = torch.get_autocast_dtype(dev)
        x, weight = x.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
    leak_f, sub_f, maxv_f = _activation.params(act, leak, sub, maxv) if act != "none" else (0.0, 0.0, math.inf)
    save = act == "general_relu" and torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    y, _ = torch.ops.pydl.conv2d(x, weight, bias, stride, [pads[0], pads[2]], dilation, groups, act,
                                 leak_f, sub_f, maxv_f, save, name)
    return y.squeeze(0) if unbatched else y
