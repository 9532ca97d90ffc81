"""``conv2d``: 2-D convolution, forward and backward, with an optional fused bias + activation epilogue.

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
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .. import backends
from . import _activation
from ._common import LIB, acc_dtype, check_floating, compiled

__all__ = ["conv2d", "conv2d_reference", "conv2d_backward_reference", "conv2d_output_size"]

# GPU backends: use TF32 tensor cores for float32 inputs. Off by default: exact fp32, like the CPU.
ALLOW_TF32 = os.environ.get("PYDL_CONV_TF32", "0") == "1"

LIB.define("conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation, int groups, "
           "str act, float leak, float sub, float maxv, bool save_preact, str backend) -> (Tensor, Tensor)")
LIB.define("conv2d_backward(Tensor grad_y, Tensor x, Tensor w, Tensor? z, int[2] stride, int[2] padding, "
           "int[2] dilation, int groups, str act, float leak, float sub, float maxv, bool[3] output_mask, "
           "str backend) -> (Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------------------------------
# Argument checks (shared by the op, its fake and its backward)
# --------------------------------------------------------------------------------------------------

def conv2d_output_size(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> Tuple[int, int]:
    """(Ho, Wo) = floor((H + 2p - d*(k-1) - 1) / s) + 1 per dimension (may be <= 0: the caller checks)."""
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def out_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last output for a channels_last input (one that is not also plainly contiguous), else NCHW.
    Every backend and the fake use this one rule, so the output strides agree everywhere."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pair(v, name: str):
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"pydl.conv2d: {name} must be an int or a pair of ints, got {v!r}")
    return v


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
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise ValueError("pydl.conv2d: stride, padding and dilation must have 2 entries each")
    if min(stride) < 1:
        raise ValueError(f"pydl.conv2d: stride must be >= 1, got {list(stride)}")
    if min(dilation) < 1:
        raise ValueError(f"pydl.conv2d: dilation must be >= 1, got {list(dilation)}")
    if min(padding) < 0:
        raise ValueError(f"pydl.conv2d: padding must be >= 0, got {list(padding)}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"pydl.conv2d: groups must be a positive int, got {groups!r}")
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
        raise ValueError(f"pydl.conv2d: weight must have nonzero sizes, got {tuple(w.shape)}")
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
        raise ValueError(f"pydl.conv2d: kernel size ({kh}, {kw}) with dilation {list(dilation)} is larger than the "
                         f"padded input ({H + 2 * padding[0]}, {W + 2 * padding[1]})")
    return ho, wo


# --------------------------------------------------------------------------------------------------
# reference: plain PyTorch, written to be read (im2col with F.unfold, one matmul per group, col2im with F.fold)
# --------------------------------------------------------------------------------------------------

def _im2col(x, kh, kw, stride, padding, dilation, groups):
    """(N, groups, Cg*kh*kw, Ho*Wo): column l holds the taps output pixel l reads, in w's (c, i, j) order."""
    N, C = x.shape[:2]
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    return cols.view(N, groups, (C // groups) * kh * kw, cols.shape[-1])


def conv2d_reference(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact):
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


def conv2d_backward_reference(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv,
                              output_mask):
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

def _triton_fwd():
    from ..kernels.conv2d import conv2d_triton

    return conv2d_triton


def _triton_bwd():
    from ..kernels.conv2d import conv2d_backward_triton

    return conv2d_backward_triton


def _cuda(name: str, namespace: str = "pydl_cuda"):
    """The compiled CUDA op takes one more argument than the other backends: the TF32 switch, read per call."""
    load = compiled(namespace, name)

    def loader():
        fn = load()
        return lambda *args: fn(*args, ALLOW_TF32)

    return loader


OP = backends.register_op(backends.Op("conv2d", {
    "reference": lambda: conv2d_reference,
    "cpu": compiled("pydl_cpu", "conv2d"),
    "cuda": _cuda("conv2d"),
    "triton": _triton_fwd,
    "cuda_emu": _cuda("conv2d", "pydl_cuda_emu"),
}))

# The backward op is its own Op so `auto` resolves it independently, but it lives in the same compiled
# libraries as the forward (csrc/cpu/conv2d.cpp defines both): the Op's name decides what gets built.
OP_BWD = backends.Op("conv2d", {
    "reference": lambda: conv2d_backward_reference,
    "cpu": compiled("pydl_cpu", "conv2d_backward"),
    "cuda": _cuda("conv2d_backward"),
    "triton": _triton_bwd,
    "cuda_emu": _cuda("conv2d_backward", "pydl_cuda_emu"),
})


def _kernel(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, backend):
    check_args(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv)
    return OP(backend, x.device.type, x, w, b, list(stride), list(padding), list(dilation), groups, act,
              leak, sub, maxv, save_preact)


def _kernel_bwd(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask, backend):
    ho, wo = check_args(x, w, None, stride, padding, dilation, groups, act, leak, sub, maxv)
    want = (x.shape[0], w.shape[0], ho, wo)
    if tuple(grad_y.shape) != want:
        raise ValueError(f"pydl.conv2d_backward: grad_y must have shape {want}, got {tuple(grad_y.shape)}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"pydl.conv2d_backward: grad_y dtype {grad_y.dtype} does not match x dtype {x.dtype}")
    if act != "none" and (z is None or tuple(z.shape) != want):
        raise ValueError(f"pydl.conv2d_backward: act={act!r} needs z (the pre-activation, or y for relu) of "
                         f"shape {want}")
    return OP_BWD(backend, x.device.type, grad_y, x, w, z, list(stride), list(padding), list(dilation), groups,
                  act, leak, sub, maxv, list(output_mask))


for _key in ("CPU", "CUDA"):
    LIB.impl("conv2d", _kernel, _key)
    LIB.impl("conv2d_backward", _kernel_bwd, _key)


@torch.library.register_fake("pydl::conv2d")
def _fake(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, backend):
    ho, wo = check_args(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv)
    fmt = out_memory_format(x)
    y = x.new_empty((x.shape[0], w.shape[0], ho, wo)).contiguous(memory_format=fmt)
    z = torch.empty_like(y) if (act == "general_relu" and save_preact) else x.new_empty((0,))
    return y, z


@torch.library.register_fake("pydl::conv2d_backward")
def _fake_bwd(grad_y, x, w, z, stride, padding, dilation, groups, act, leak, sub, maxv, output_mask, backend):
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
    elif act == "general_relu" and z.numel() == y.numel():
        saved = z
    else:
        saved = None
    ctx.save_for_backward(x, w, b, saved)
    ctx.args = (list(stride), list(padding), list(dilation), groups, act, leak, sub, maxv, backend)
    ctx.has_bias = b is not None
    ctx.mark_non_differentiable(z)  # z is a saved intermediate, not a result anyone differentiates


def _backward(ctx, grad_y, grad_z):
    x, w, b, saved = ctx.saved_tensors
    stride, padding, dilation, groups, act, leak, sub, maxv, backend = ctx.args
    if act == "general_relu" and saved is None:
        # z was not kept: recompute it (one more forward conv, no activation)
        saved = torch.ops.pydl.conv2d(x, w, b, stride, padding, dilation, groups, "none", 0.0, 0.0, math.inf,
                                      False, backend)[0]
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = torch.ops.pydl.conv2d_backward(grad_y.contiguous(memory_format=out_memory_format(grad_y)), x, w,
                                                saved, stride, padding, dilation, groups, act, leak, sub, maxv,
                                                mask, backend)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None, None, None, None, None, None)


torch.library.register_autograd("pydl::conv2d", _backward, setup_context=_setup_context)


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
           maxv: Optional[float] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` (plus torch.nn.Conv2d's ``padding_mode``) with an optional fused
    activation: ``act`` = ``"none"``, ``"relu"`` or ``"general_relu"`` (``leak``, ``sub``, ``maxv`` as fastai's
    GeneralRelu). ``x`` is (N, C, H, W) or unbatched (C, H, W). ``backend``: reference, cpu, cuda, triton, auto
    (default: the current :func:`pydl.backend`)."""
    name = backends.get_backend() if backend is None else backend
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pydl.conv2d: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"pydl.conv2d: weight must be a torch.Tensor, got {type(weight).__name__}")
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
        p = _pair(padding, "padding")
        pads = [p[0], p[0], p[1], p[1]]
    if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
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
    y, _ = torch.ops.pydl.conv2d(x, weight, bias, stride, [pads[0], pads[2]], dilation, int(groups), act,
                                 leak_f, sub_f, maxv_f, save, name)
    return y.squeeze(0) if unbatched else y
