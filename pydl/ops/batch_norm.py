"""``batch_norm``: batch normalisation (training and eval), with an optional fused activation, in every backend.

(Why one long file: seven ops -- the functional op, the running-stat update, the backward and the four
separable steps SyncBatchNorm all-reduces between -- share one contract, one argument check and one
backend table; they are one vertical slice.)

The math, per channel ``c`` of ``x`` of shape ``(N, C, *spatial)`` (``n = N * prod(spatial)`` values a channel):

    training (batch stats):  mean = sum(x) / n,  var = sum((x - mean)^2) / n     (biased, for normalising)
    eval (running stats):    mean = running_mean, var = running_var
    invstd = 1 / sqrt(var + eps)
    z = (x - mean) * invstd * weight + bias      (weight = 1, bias = 0 when affine=False)
    y = act(z)                                   (none / relu / general_relu: pydl/ops/_activation.py)

    running update (training, in place):  running_mean = (1 - f) * running_mean + f * mean
                                           running_var  = (1 - f) * running_var  + f * var * n / (n - 1)
    with f = momentum, or 1 / num_batches_tracked when momentum is None (a cumulative average).

Backward (training): with dz = act'(z) * dy and xmu = x - mean, two per-channel sums in ONE pass over (dy, x)

    sum_dz = sum(dz),  sum_dz_xmu = sum(dz * xmu)
    dbias = sum_dz,    dweight = sum_dz_xmu * invstd
    dx = weight * invstd * (dz - sum_dz / n - xmu * invstd^2 * sum_dz_xmu / n)      (a second, elementwise pass)

In eval the mean and var are constants: dx = weight * invstd * dz. Double backward (gradient penalties) is
differentiated through the reference formulas in plain torch, for every backend: correct, not fast.

**Ops** (all in the ``pydl`` namespace, each dispatched to a backend like act_stats):

* ``batch_norm(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, backend)
  -> (y, mean, invstd, var)``: the forward, differentiable (autograd registered here). ``mean``/``invstd`` are
  saved for the backward; ``var`` (biased) feeds the running update. It does NOT touch the running stats:
  torch.library.register_autograd refuses ops that mutate their inputs, so that is a separate op...
* ``batch_norm_update_running(running_mean!, running_var!, mean, var, count, momentum?, num_batches_tracked?,
  backend)``: ...the in-place running-stat update, a C-element op run right after the forward.
* ``batch_norm_backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad,
  backend) -> (dx, dweight, dbias)``: the backward (reduce pass + elementwise pass).

and the separable steps, for a SyncBatchNorm that all-reduces per-channel statistics between ranks:

* ``batch_norm_stats(x) -> (mean, m2)``: per-channel mean and M2 (sum of squared deviations). Ranks combine
  their (count, mean, M2): an all_gather merged with Chan's formula is exact; one all-reduce of (count,
  count*mean, M2 + count*mean^2) is cheaper, but its last term is a sum of squares again (cancellation when
  |mean| >> std);
* ``batch_norm_apply(x, mean, invstd, weight, bias, act...) -> y``: the normalise + affine + act step;
* ``batch_norm_backward_reduce(dy, x, mean, invstd, weight, bias, act...) -> (sum_dz, sum_dz_xmu)``: the two
  sums (all-reduce them across ranks), then
* ``batch_norm_backward_elemt(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, count, act...) -> dx``.

Statistics are in the accumulation dtype (fp32; fp64 for fp64 input). ``weight``/``bias``/running stats have
x's dtype, or fp32 when x is fp16/bf16 (mixed precision, as torch allows); dweight/dbias come back in the
parameters' dtype.

Backends: each backend provides a :class:`Kernels` tuple of seven functions (forward, update_running,
backward, stats, apply, backward_reduce, backward_elemt) with the reference functions' signatures;
``backends.all_ops()["batch_norm"].override(name, Kernels(...))`` plugs in another set.

**Arguments** are checked in the caller's terms, by the public function, the dispatcher kernels and the
compiled ops alike (TypeError for a wrong type, ValueError for a bad value, each naming the argument):
``eps`` > 0 in training and >= 0 in eval (torch's rule); ``momentum`` a finite float or None;
``num_batches_tracked`` a one-element integer tensor, >= 1 when momentum is None (reading it syncs with the
device, as torch's module does); ``count`` >= 0; weight/bias/running stats of shape (C,).

**Large values**: statistics are merged so that overflowing sums or deltas never form inf - inf; a var too
large for the accumulation dtype is inf (invstd 0, y = bias, running_var inf), as in torch.

**Where pydl deliberately differs from torch** (tests/test_fuzz_batch_norm.py counts each as by design):

* weight, bias and running stats must be 1-D (C,); torch's functional form reads any tensor with C elements
  flat ((C, 1) included). The error says so and how to reshape.
* eps = NaN and a non-finite momentum are refused; torch accepts them and returns NaN.
* a channel whose float32 *sum* overflows (values near float32's max) gets its true mean and var; torch's
  float32 training forward turns that channel into inf/NaN. y there is still computed as
  ``x * scale + shift`` (one FMA, shift = bias - mean * scale) in the compiled backends, which overflows
  when |mean| * invstd exceeds the dtype's range (float32 values beyond ~1e36 with a spread below ~1):
  y is then inf/NaN -- a known limit, not a divergence from torch (which is NaN there too).
* zero channels: empty outputs; torch's eval path raises IndexError.
* torch's own answer can depend on x's memory layout where it should not (a float32 var that overflows is
  inf on its contiguous path, kept in float64 on its strided one); pydl follows the contiguous path in
  every layout.

**Two paths to the same kernels**: a plain eager call of :func:`batch_norm` (no compiler, tracer, mode,
transform or tensor subclass involved) goes through the *eager door*, a small autograd.Function that calls
the backend's kernels directly; anything else goes through the registered ops above, which torch.compile,
opcheck and friends can trace. Both run the same checks and the same ``_run_forward``/``_run_backward``
(see "The eager door" below, and docs/ARCHITECTURE.md, for why: the registered op's autograd wrapper costs
~40 us a call).

**Layouts**: every backend sees a *dense* x in one of two layouts, chosen once here (:func:`dense_layout`):
"NCL" (contiguous: each (n, c) plane of L = prod(spatial) values is contiguous) or "NLC" (channels last, and
2-D (N, C): rows of C channels). Anything else (sliced, oddly permuted) is copied to contiguous first. y and
dx come back with x's (dense) strides, as torch's BatchNorm does for channels_last.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from .. import backends
from .._layout import acc_dtype, channel_count, dense_layout
from . import _activation
from ._common import (FLOAT_DTYPES, LIB, check_backend_name, check_bool, check_floating, check_int, check_real,
                      plain_eager)

__all__ = ["batch_norm", "batch_norm_reference", "batch_norm_stats", "batch_norm_apply",
           "batch_norm_backward_reduce", "batch_norm_backward_elemt"]

_ACT_ARGS = "str act, float leak, float sub, float maxv"

LIB.define(f"batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
           f"bool use_batch_stats, float eps, {_ACT_ARGS}, str backend) -> (Tensor, Tensor, Tensor, Tensor)")
LIB.define("batch_norm_update_running(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
           "int count, float? momentum, Tensor? num_batches_tracked, str backend) -> ()")
LIB.define(f"batch_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
           f"bool use_batch_stats, {_ACT_ARGS}, bool input_grad, str backend) -> (Tensor, Tensor, Tensor)")
LIB.define("batch_norm_stats(Tensor x, str backend) -> (Tensor, Tensor)")
LIB.define(f"batch_norm_apply(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, {_ACT_ARGS}, "
           f"str backend) -> Tensor")
LIB.define(f"batch_norm_backward_reduce(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, "
           f"Tensor? bias, {_ACT_ARGS}, str backend) -> (Tensor, Tensor)")
LIB.define(f"batch_norm_backward_elemt(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, "
           f"Tensor? bias, Tensor sum_dz, Tensor sum_dz_xmu, int count, {_ACT_ARGS}, str backend) -> Tensor")


# --------------------------------------------------------------------------------------------------
# Layout and argument checks (shared by the real kernels and the fake ones, so both agree on strides)
# --------------------------------------------------------------------------------------------------

def _check_param(t, name: str, x: torch.Tensor, op: str) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pydl.{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    C = x.shape[1]
    if t.dim() != 1 or t.shape[0] != C:
        # torch.nn.functional.batch_norm takes weight/bias of any shape with C elements ((C, 1) too) and
        # reads them flat; pydl keeps the (C,) of its schema and of torch's modules: say how to get there
        rule = (f"; torch's functional batch_norm reads any {name} with {C} elements flat, pydl asks for the "
                f"1-D ({C},) form: pass {name}.reshape(-1)" if t.numel() == C else "")
        raise ValueError(f"pydl.{op}: {name} must have shape ({C},) (one value per channel of x), "
                         f"got {tuple(t.shape)}{rule}")
    if t.device != x.device:
        raise ValueError(f"pydl.{op}: {name} is on {t.device} but x is on {x.device}")
    mixed_ok = x.dtype in (torch.float16, torch.bfloat16) and t.dtype == torch.float32
    if t.dtype != x.dtype and not mixed_ok:
        raise TypeError(f"pydl.{op}: {name} has dtype {t.dtype} but x is {x.dtype}; {name} must have x's dtype "
                        f"(or float32 when x is float16/bfloat16)")


def _check_x(x, op: str) -> None:
    check_floating(x, op, "x")
    if x.dim() < 2:
        raise ValueError(f"pydl.{op}: x must have shape (N, C, ...) with rank >= 2, got rank {x.dim()}")


def _check_stat(t, name: str, x, op: str) -> None:
    """mean / invstd / sums: (C,) tensors in the accumulation dtype, on x's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pydl.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != (x.shape[1],) or t.device != x.device or t.dtype != acc_dtype(x.dtype):
        raise ValueError(f"pydl.{op}: {name} must be a ({x.shape[1]},) {acc_dtype(x.dtype)} tensor on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


def check_forward_args(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv,
                       op="batch_norm") -> None:
    _check_x(x, op)
    _check_params(x, weight, bias, running_mean, running_var, op)
    check_mode(x, running_mean, running_var, use_batch_stats, op)
    check_eps(eps, use_batch_stats, op)
    _activation.check_act(act, leak, sub, maxv, op)


def _check_params(x, weight, bias, running_mean, running_var, op: str) -> None:
    # per call, so the common case is quick: a (C,) tensor with x's dtype and device passes on four reads;
    # anything else (mixed precision included) goes to _check_param, which accepts it or says what is wrong
    shape, dtype, device = x.shape[1:2], x.dtype, x.device
    for t, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
                    (running_var, "running_var")):
        if t is not None and not (isinstance(t, torch.Tensor) and t.shape == shape and t.dtype == dtype
                                  and t.device == device):
            _check_param(t, name, x, op)


def check_mode(x, running_mean, running_var, use_batch_stats: bool, op: str) -> None:
    """What training and eval each need: more than one value per channel to take statistics of; running
    stats to normalise with."""
    if use_batch_stats:
        if channel_count(x) == 1:  # torch's exact words: code that catches them keeps working
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    elif running_mean is None or running_var is None:
        raise ValueError(f"pydl.{op}: eval mode (use_batch_stats=False) needs running_mean and running_var")


def check_eps(eps, use_batch_stats: bool, op: str) -> None:
    """torch's rule: eps > 0 in training (a constant channel has var 0: eps is all that keeps 1/sqrt(var + eps)
    finite), eps >= 0 in eval. NaN is refused too (torch lets it through and returns NaN everywhere)."""
    check_real(eps, op, "eps", "a float > 0 in training, >= 0 in eval")
    if use_batch_stats and not eps > 0:
        raise ValueError(f"pydl.{op}: eps must be > 0 in training (use_batch_stats=True), got {eps}")
    if not eps >= 0:
        raise ValueError(f"pydl.{op}: eps must be >= 0, got {eps}")


def check_momentum(momentum, op: str) -> Optional[float]:
    """None (the cumulative average over num_batches_tracked) or a finite float (torch accepts NaN and inf
    and turns the running stats into NaN; pydl refuses them)."""
    if momentum is None:
        return None
    m = check_real(momentum, op, "momentum", "a finite float (0.1 in torch's modules) or None")
    if not math.isfinite(m):
        raise ValueError(f"pydl.{op}: momentum must be a finite float or None, got {momentum}")
    return m


def check_num_batches_tracked(nbt, momentum, op: str, read_value: bool = True) -> None:
    """num_batches_tracked: a one-element integer tensor, >= 1 when it is used (momentum=None): the factor is
    1 / num_batches_tracked. Reading the value syncs with the device once, as torch's module does with
    float(num_batches_tracked); a 0 there would silently turn the running stats into NaN. The public function
    leaves the value to the op (``read_value=False``): under torch.compile it is a graph break there, while
    the op's kernel runs on the real tensor."""
    if nbt is None:
        if momentum is None:
            raise ValueError(f"pydl.{op}: momentum=None (cumulative average) needs num_batches_tracked")
        return
    if not isinstance(nbt, torch.Tensor):
        raise TypeError(f"pydl.{op}: num_batches_tracked must be a one-element integer tensor or None, got "
                        f"{type(nbt).__name__}")
    if nbt.numel() != 1 or nbt.dtype.is_floating_point or nbt.dtype.is_complex or nbt.dtype == torch.bool:
        raise ValueError(f"pydl.{op}: num_batches_tracked must be a one-element integer tensor, got shape "
                         f"{tuple(nbt.shape)} {nbt.dtype}")
    if read_value and momentum is None and int(nbt.reshape(())) < 1:
        raise ValueError(f"pydl.{op}: num_batches_tracked must be >= 1 with momentum=None (the running stats "
                         f"average 1 / num_batches_tracked of each batch), got {int(nbt.reshape(()))}")


def act_params(act: str, leak: Optional[float], sub: Optional[float], maxv: Optional[float],
               op: str) -> Tuple[float, float, float]:
    """_activation.params with the types checked first: float('fast') would fail without naming the argument."""
    if not isinstance(act, str):
        raise TypeError(f"pydl.{op}: act must be one of {_activation.ACTIVATIONS}, got {act!r}")
    for name, v in (("leak", leak), ("sub", sub), ("maxv", maxv)):
        if v is not None:
            check_real(v, op, name, "a float or None")
    return _activation.params(act, leak, sub, maxv)


# --------------------------------------------------------------------------------------------------
# reference: plain PyTorch, written to be read
# --------------------------------------------------------------------------------------------------

def _dims(x):
    return [0] + list(range(2, x.dim()))


def _per_channel(t, x):
    """A (C,) tensor shaped to broadcast against x: (1, C, 1, ...)."""
    return t.reshape((1, -1) + (1,) * (x.dim() - 2))


def _ref_stats(x):
    acc = acc_dtype(x.dtype)
    n = channel_count(x)
    if x.numel() == 0:  # no values (or no channels): zero statistics, as every backend gives
        z = torch.zeros(x.shape[1], dtype=acc, device=x.device)
        return z, z.clone()
    var, mean = _var_mean(x.to(acc), _dims(x))
    return mean, var * n


def _var_mean(x, dims):
    """torch.var_mean (Welford: no overflow of a sum, no cancellation), except that a channel holding +-inf
    has the mean torch's batch_norm gives it (the sum's: +-inf, or NaN for both signs), not Welford's NaN."""
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return var, torch.where(torch.isnan(mean), x.sum(dims) / max(channel_count(x), 1), mean)


def _ref_z(x, mean, invstd, weight, bias):
    acc = mean.dtype
    z = (x.to(acc) - _per_channel(mean, x)) * _per_channel(invstd, x)
    if weight is not None:
        z = z * _per_channel(weight.to(acc), x)
    if bias is not None:
        z = z + _per_channel(bias.to(acc), x)
    return z


def _ref_apply(x, mean, invstd, weight, bias, act, leak, sub, maxv):
    y = _activation.apply(_ref_z(x, mean, invstd, weight, bias), act, leak, sub, maxv).to(x.dtype)
    return torch.empty_like(x).copy_(y)  # x's strides (channels_last stays channels_last)


def _ref_forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv):
    acc = acc_dtype(x.dtype)
    if use_batch_stats:
        mean, m2 = _ref_stats(x)
        var = m2 / max(channel_count(x), 1)
    else:
        # copies: an op's outputs must not alias its inputs (the schema says they do not)
        mean, var = running_mean.to(acc, copy=True), running_var.to(acc, copy=True)
    invstd = torch.rsqrt(var + eps)
    return _ref_apply(x, mean, invstd, weight, bias, act, leak, sub, maxv), mean, invstd, var


def _ref_update_running(running_mean, running_var, mean, var, count, momentum, num_batches_tracked):
    if count == 0:  # an empty batch leaves the running stats alone (as torch does)
        return
    f = (1.0 / num_batches_tracked.double()) if momentum is None else momentum
    unbiased = var * (count / (count - 1) if count > 1 else 1.0)  # one value: no Bessel factor to apply
    acc = mean.dtype
    running_mean.copy_(((1 - f) * running_mean.to(acc) + f * mean).to(running_mean.dtype))
    running_var.copy_(((1 - f) * running_var.to(acc) + f * unbiased).to(running_var.dtype))


def _ref_backward_reduce(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv):
    acc = mean.dtype
    dz = _activation.grad(dy.to(acc), _ref_z(x, mean, invstd, weight, bias), act, leak, sub, maxv)
    xmu = x.to(acc) - _per_channel(mean, x)
    return dz.sum(_dims(x)), (dz * xmu).sum(_dims(x))


def _ref_backward_elemt(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, count, act, leak, sub, maxv):
    acc = mean.dtype
    dz = _activation.grad(dy.to(acc), _ref_z(x, mean, invstd, weight, bias), act, leak, sub, maxv)
    k = invstd if weight is None else invstd * weight.to(acc)
    n = max(count, 1)
    xmu = x.to(acc) - _per_channel(mean, x)
    dx = (dz - _per_channel(sum_dz / n, x) - xmu * _per_channel(invstd * invstd * sum_dz_xmu / n, x)) \
        * _per_channel(k, x)
    return torch.empty_like(x).copy_(dx.to(x.dtype))


def _ref_backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad):
    sum_dz, sum_dz_xmu = _ref_backward_reduce(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv)
    if not input_grad:
        dx = x.new_empty((0,))
    elif use_batch_stats:
        dx = _ref_backward_elemt(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, channel_count(x),
                                 act, leak, sub, maxv)
    else:  # mean and invstd are constants: no terms through the statistics (dx = weight * invstd * dz)
        acc = mean.dtype
        dz = _activation.grad(dy.to(acc), _ref_z(x, mean, invstd, weight, bias), act, leak, sub, maxv)
        k = invstd if weight is None else invstd * weight.to(acc)
        dx = torch.empty_like(x).copy_((dz * _per_channel(k, x)).to(x.dtype))
    return dx, sum_dz_xmu * invstd, sum_dz


class Kernels(NamedTuple):
    """One backend's batch-norm kernels (the same signatures in every backend; x is already dense)."""
    forward: object
    update_running: object
    backward: object
    stats: object
    apply: object
    backward_reduce: object
    backward_elemt: object


REFERENCE = Kernels(_ref_forward, _ref_update_running, _ref_backward, _ref_stats, _ref_apply,
                    _ref_backward_reduce, _ref_backward_elemt)


def batch_norm_reference(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                         running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None, training: bool = False, momentum: Optional[float] = 0.1,
                         eps: float = 1e-5, act: str = "none", leak: Optional[float] = None,
                         sub: Optional[float] = None, maxv: Optional[float] = None,
                         num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ground truth as one readable function (plain torch ops, no autograd of its own: autograd
    differentiates it through torch's ops). Same contract as :func:`batch_norm`."""
    leak_, sub_, maxv_ = _activation.params(act, leak, sub, maxv)
    acc = acc_dtype(x.dtype)
    if training:
        var, mean = _var_mean(x.to(acc), _dims(x))
        if running_mean is not None:
            with torch.no_grad():
                _ref_update_running(running_mean, running_var, mean.detach(), var.detach(), channel_count(x),
                                    momentum, num_batches_tracked)
    else:
        mean, var = running_mean.to(acc), running_var.to(acc)
    z = _ref_z(x, mean, torch.rsqrt(var + eps), weight, bias)
    return _activation.apply(z, act, leak_, sub_, maxv_).to(x.dtype)


def _compiled(namespace: str):
    def load():
        ns = getattr(torch.ops, namespace)
        k = Kernels(*(getattr(ns, "batch_norm_" + f).default for f in Kernels._fields))
        if namespace == "pydl_cpu":  # the C++ eval door (eval_forward), taken while these are the CPU kernels
            global _CPU_EVAL
            _CPU_EVAL = (k, ns.batch_norm_eval.default)
        return k

    return load


# (the loaded CPU Kernels, its C++ eval op): eval_forward takes the op only while OP.impl("cpu") is those
# Kernels, so Op.override("cpu", ...) still sees every call
_CPU_EVAL: Tuple = (None, None)
# tests compare the C++ eval door with the Python one by turning it off (not a knob: no algorithm changes)
_USE_CPP_EVAL = True


def _triton():
    from ..kernels import batch_norm as k

    return Kernels(k.forward, k.update_running, k.backward, k.stats, k.apply, k.backward_reduce, k.backward_elemt)


OP = backends.register_op(backends.Op("batch_norm", {
    "reference": lambda: REFERENCE,
    "cpu": _compiled("pydl_cpu"),
    "cuda": _compiled("pydl_cuda"),
    "triton": _triton,
    "cuda_emu": _compiled("pydl_cuda_emu"),
}))


def kernels(backend: str, device_type: str) -> Kernels:
    """The Kernels of a backend name ('auto' resolved for this device type)."""
    return OP.impl(OP.resolve(backend, device_type))


# --------------------------------------------------------------------------------------------------
# Dispatcher kernels (CPU and CUDA keys): check, fix the layout, call the backend
# --------------------------------------------------------------------------------------------------

def _dense(x):
    """dense_layout(x), the same tensor, found sooner for the two common layouts: torch keeps contiguity
    flags for NCHW and 4-D channels_last (size-1 dims skipped, as dense_layout does), where the general
    channels-last test builds a permuted view (~1 us, a tenth of a small eager call)."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return dense_layout(x)


def _out_dtype(t, fallback):
    return fallback if t is None else t.dtype


def _forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, backend):
    check_forward_args(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv)
    return _run_forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv,
                        backend)


# _run_forward / _run_backward: the work after the checks, shared by the dispatcher kernels and the eager
# door (below), so the two paths cannot drift apart.

def _run_forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, backend):
    if use_batch_stats:
        running_mean = running_var = None  # not read: the kernels need not see them
    return kernels(backend, x.device.type).forward(_dense(x), weight, bias, running_mean, running_var,
                                                   use_batch_stats, eps, act, leak, sub, maxv)


def _check_backward_args(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, op):
    _check_x(x, op)
    check_floating(dy, op, "dy")
    if dy.shape != x.shape or dy.device != x.device or dy.dtype != x.dtype:
        raise ValueError(f"pydl.{op}: dy must match x (shape {tuple(x.shape)}, {x.dtype}, {x.device}), got "
                         f"{tuple(dy.shape)} {dy.dtype} on {dy.device}")
    _check_stat(mean, "mean", x, op)
    _check_stat(invstd, "invstd", x, op)
    _check_param(weight, "weight", x, op)
    _check_param(bias, "bias", x, op)
    _activation.check_act(act, leak, sub, maxv, op)


def _like(dy, x):
    """dy in x's (dense) layout: the kernels index both with the same offsets."""
    return dy if dy.stride() == x.stride() else torch.empty_like(x).copy_(dy)


def _backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad, backend):
    _check_backward_args(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, "batch_norm_backward")
    return _run_backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad,
                         backend)


def _run_backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad, backend):
    x = _dense(x)
    dx, dw, db = kernels(backend, x.device.type).backward(_like(dy, x), x, mean, invstd, weight, bias,
                                                          use_batch_stats, act, leak, sub, maxv, input_grad)
    # dweight/dbias in the parameters' dtype (fp16/bf16 ones: the kernels' sums are fp32); .to() only when it
    # changes something (a no-op .to() is still a dispatcher call)
    if weight is not None and weight.dtype != dw.dtype:
        dw = dw.to(weight.dtype)
    if bias is not None and bias.dtype != db.dtype:
        db = db.to(bias.dtype)
    return dx, dw, db


def _update_running(running_mean, running_var, mean, var, count, momentum, num_batches_tracked, backend):
    op = "batch_norm_update_running"
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (mean, "mean"), (var, "var")):
        check_floating(t, op, name)
        if t.shape != mean.shape or t.dim() != 1 or t.device != mean.device:
            raise ValueError(f"pydl.{op}: {name} must be a ({mean.shape[0]},) tensor on {mean.device}, "
                             f"got {tuple(t.shape)} on {t.device}")
    if var.dtype != mean.dtype:
        raise TypeError(f"pydl.{op}: var ({var.dtype}) and mean ({mean.dtype}) must share a dtype")
    check_momentum(momentum, op)
    check_num_batches_tracked(num_batches_tracked, momentum, op)
    check_int(count, op, "count", 0)
    kernels(backend, mean.device.type).update_running(running_mean, running_var, mean, var, count, momentum,
                                                      num_batches_tracked)


def _stats(x, backend):
    _check_x(x, "batch_norm_stats")
    return kernels(backend, x.device.type).stats(dense_layout(x))


def _apply(x, mean, invstd, weight, bias, act, leak, sub, maxv, backend):
    op = "batch_norm_apply"
    _check_x(x, op)
    _check_stat(mean, "mean", x, op)
    _check_stat(invstd, "invstd", x, op)
    _check_param(weight, "weight", x, op)
    _check_param(bias, "bias", x, op)
    _activation.check_act(act, leak, sub, maxv, op)
    return kernels(backend, x.device.type).apply(dense_layout(x), mean, invstd, weight, bias, act, leak, sub, maxv)


def _backward_reduce(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, backend):
    _check_backward_args(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, "batch_norm_backward_reduce")
    x = dense_layout(x)
    return kernels(backend, x.device.type).backward_reduce(_like(dy, x), x, mean, invstd, weight, bias,
                                                           act, leak, sub, maxv)


def _backward_elemt(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, count, act, leak, sub, maxv, backend):
    op = "batch_norm_backward_elemt"
    _check_backward_args(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, op)
    _check_stat(sum_dz, "sum_dz", x, op)
    _check_stat(sum_dz_xmu, "sum_dz_xmu", x, op)
    check_int(count, op, "count", 0)
    x = dense_layout(x)
    return kernels(backend, x.device.type).backward_elemt(_like(dy, x), x, mean, invstd, weight, bias, sum_dz,
                                                          sum_dz_xmu, count, act, leak, sub, maxv)


for _name, _fn in (("batch_norm", _forward), ("batch_norm_backward", _backward),
                   ("batch_norm_update_running", _update_running), ("batch_norm_stats", _stats),
                   ("batch_norm_apply", _apply), ("batch_norm_backward_reduce", _backward_reduce),
                   ("batch_norm_backward_elemt", _backward_elemt)):
    LIB.impl(_name, _fn, "CPU")
    LIB.impl(_name, _fn, "CUDA")


# --------------------------------------------------------------------------------------------------
# Fake (meta) implementations: shapes, dtypes and strides only
# --------------------------------------------------------------------------------------------------

def _stat_like(x):
    return x.new_empty((x.shape[1],), dtype=acc_dtype(x.dtype))


@torch.library.register_fake("pydl::batch_norm")
def _forward_fake(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, backend):
    check_forward_args(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv)
    return torch.empty_like(dense_layout(x)), _stat_like(x), _stat_like(x), _stat_like(x)


@torch.library.register_fake("pydl::batch_norm_backward")
def _backward_fake(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad, backend):
    _check_backward_args(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, "batch_norm_backward")
    dx = torch.empty_like(dense_layout(x)) if input_grad else x.new_empty((0,))
    return (dx, _stat_like(x).to(_out_dtype(weight, mean.dtype)), _stat_like(x).to(_out_dtype(bias, mean.dtype)))


@torch.library.register_fake("pydl::batch_norm_update_running")
def _update_running_fake(running_mean, running_var, mean, var, count, momentum, num_batches_tracked, backend):
    return None


@torch.library.register_fake("pydl::batch_norm_stats")
def _stats_fake(x, backend):
    _check_x(x, "batch_norm_stats")
    return _stat_like(x), _stat_like(x)


@torch.library.register_fake("pydl::batch_norm_apply")
def _apply_fake(x, mean, invstd, weight, bias, act, leak, sub, maxv, backend):
    return torch.empty_like(dense_layout(x))


@torch.library.register_fake("pydl::batch_norm_backward_reduce")
def _backward_reduce_fake(dy, x, mean, invstd, weight, bias, act, leak, sub, maxv, backend):
    return _stat_like(x), _stat_like(x)


@torch.library.register_fake("pydl::batch_norm_backward_elemt")
def _backward_elemt_fake(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu, count, act, leak, sub, maxv,
                         backend):
    return torch.empty_like(dense_layout(x))


# --------------------------------------------------------------------------------------------------
# Autograd: on the non-mutating forward; its backward is the backend-dispatched batch_norm_backward
# --------------------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    x, weight, bias, _rm, _rv, use_batch_stats, _eps, act, leak, sub, maxv, backend = inputs
    _y, mean, invstd, var = output
    ctx.save_for_backward(x, weight, bias, mean, invstd)
    ctx.args = (use_batch_stats, act, leak, sub, maxv, backend)
    ctx.mark_non_differentiable(mean, invstd, var)


def _autograd_backward(ctx, dy, _dmean, _dinvstd, _dvar):
    x, weight, bias, mean, invstd = ctx.saved_tensors
    use_batch_stats, act, leak, sub, maxv, backend = ctx.args
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = torch.ops.pydl.batch_norm_backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act,
                                                    leak, sub, maxv, need_x, backend)
    return (dx if need_x else None, dw if need_w else None, db if need_b else None) + (None,) * 9


torch.library.register_autograd("pydl::batch_norm", _autograd_backward, setup_context=_setup_context)


# Double backward (gradient penalties, Hessian-vector products): rare enough that it is not worth a kernel in
# every backend, and too easy to get silently wrong (without this, autograd would treat the backward op's
# outputs as constants and return zeros). It differentiates the reference formulas of the first backward in
# plain torch -- correct in every backend, not fast. In training, mean and invstd are functions of x: they
# are recomputed from x here so that dependence is differentiated too (the saved ones are constants to
# autograd). invstd = rsqrt(var(x) + c) with c = invstd_saved^-2 - var(x), detached: the same value as the
# saved invstd, and the derivative of rsqrt(var + eps) without needing eps.

def _setup_backward_context(ctx, inputs, output):
    dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad, _backend = inputs
    ctx.save_for_backward(dy, x, mean, invstd, weight, bias)
    ctx.args = (use_batch_stats, act, leak, sub, maxv, input_grad)


def _double_backward(ctx, ddx, ddw, ddb):
    dy, x, mean, invstd, weight, bias = ctx.saved_tensors
    use_batch_stats, act, leak, sub, maxv, input_grad = ctx.args
    acc = mean.dtype
    dims = _dims(x)
    n = max(channel_count(x), 1)
    with torch.enable_grad():
        leaves = {"dy": dy.detach().to(acc).requires_grad_(), "x": x.detach().to(acc).requires_grad_()}
        if weight is not None:
            leaves["weight"] = weight.detach().to(acc).requires_grad_()
        if bias is not None:
            leaves["bias"] = bias.detach().to(acc).requires_grad_()
        xa = leaves["x"]
        if use_batch_stats:
            var, mu = torch.var_mean(xa, dim=dims, correction=0)
            istd = torch.rsqrt(var + (invstd.detach().pow(-2) - var).detach())
        else:
            mu, istd = mean.detach(), invstd.detach()
        xhat = (xa - _per_channel(mu, x)) * _per_channel(istd, x)
        w = leaves.get("weight")
        z = xhat * _per_channel(w, x) if w is not None else xhat
        if "bias" in leaves:
            z = z + _per_channel(leaves["bias"], x)
        dz = _activation.grad(leaves["dy"], z, act, leak, sub, maxv)
        sum_dz, sum_dz_xhat = dz.sum(dims), (dz * xhat).sum(dims)
        k = istd if w is None else istd * w
        if use_batch_stats:
            dx = (dz - _per_channel(sum_dz / n, x) - xhat * _per_channel(sum_dz_xhat / n, x)) * _per_channel(k, x)
        else:
            dx = dz * _per_channel(k, x)
        outs, gouts = [], []
        for o, g in ((dx, ddx if input_grad else None), (sum_dz_xhat, ddw), (sum_dz, ddb)):
            if g is not None and g.numel() == o.numel():
                outs.append(o)
                gouts.append(g.to(acc).reshape(o.shape))
        names = list(leaves)
        grads = torch.autograd.grad(outs, [leaves[k_] for k_ in names], gouts, allow_unused=True) if outs else \
            [None] * len(names)
    got = dict(zip(names, grads))
    cast = lambda g, like: None if g is None or like is None else g.to(like.dtype)  # noqa: E731
    return (cast(got.get("dy"), dy), cast(got.get("x"), x), None, None, cast(got.get("weight"), weight),
            cast(got.get("bias"), bias)) + (None,) * 7


torch.library.register_autograd("pydl::batch_norm_backward", _double_backward,
                                setup_context=_setup_backward_context)


# --------------------------------------------------------------------------------------------------
# The eager door: plain eager calls skip the registered op
# --------------------------------------------------------------------------------------------------
# torch.ops.pydl.batch_norm goes through the dispatcher twice (Autograd, then CPU/CUDA) and through the
# Python autograd wrapper torch.library generates from register_autograd (argument normalisation with
# fill_defaults, pytree flattening, a fresh autograd.Function per call...): ~40 us a call, several times
# torch's whole eager batch_norm on a small input. For a plain eager call (pydl.ops._common.plain_eager:
# no compiler, tracer, mode or transform watching, plain tensors), batch_norm runs the same checks and the
# same kernels (_run_forward/_run_backward) through this small autograd.Function instead. Everything else
# (torch.compile, opcheck, FakeTensor, vmap, subclasses) still sees the registered op, the one they can
# trace. (Not a C++ autograd kernel for every backend: it would need a build per backend, and the Triton
# and reference backends are Python. The C++ backend's eval alone has one -- eval_forward takes it -- since
# that is where a cold Python autograd.Function cost most: see csrc/cpu/batch_norm.cpp, bn_eval.)

class _EagerBatchNorm(torch.autograd.Function):
    # Only the tensors a gradient can flow to are apply()'s own arguments; the rest travel as one tuple
    # (`cfg`: running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, backend), since apply
    # inspects every argument on every call (~0.1 us each; the running stats never get a gradient).
    @staticmethod
    def forward(ctx, x, weight, bias, cfg):
        running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, backend = cfg
        y, mean, invstd, var = _run_forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps,
                                            act, leak, sub, maxv, backend)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.args = (use_batch_stats, act, leak, sub, maxv, backend)
        ctx.mark_non_differentiable(mean, invstd, var)
        return y, mean, invstd, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dinvstd, _dvar):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        use_batch_stats, act, leak, sub, maxv, backend = ctx.args
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty): the registered backward op, whose own autograd is the
            # double backward -- exactly what the registered forward's backward does
            dx, dw, db = torch.ops.pydl.batch_norm_backward(dy, x, mean, invstd, weight, bias, use_batch_stats,
                                                            act, leak, sub, maxv, need_x, backend)
        else:
            dx, dw, db = _run_backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv,
                                       need_x, backend)
        return dx if need_x else None, dw if need_w else None, db if need_b else None, None


def _forward_eager(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv,
                   backend):
    """The forward of a plain eager call (arguments already checked): no autograd node when no gradient
    can flow (eval under no_grad, inputs without requires_grad)."""
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)):
        return _EagerBatchNorm.apply(x, weight, bias, (running_mean, running_var, use_batch_stats, eps, act, leak,
                                                       sub, maxv, backend))
    return _run_forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv,
                        backend)


def eval_forward(x, running_mean, running_var, weight, bias, eps, act, leak, sub, maxv, backend):
    """``batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps, act=..., backend=...)``
    for pydl.nn's modules in eval mode: the same checks and the same eager door in fewer Python steps, or None
    when the call is not the common case (then the caller takes :func:`batch_norm`, which checks everything
    and raises its usual errors).

    Why a second entry point: after a large input's kernel has streamed megabytes through the caches, each
    Python step of the call that follows runs cold, at 2-5x its warm cost. Measured at 16x64x32x32 fp32, one
    thread (thread time): the checks of :func:`batch_norm` cost ~26 us there against ~4 us on a tiny input,
    the module's keyword call into it ~28 us against ~5. So this takes the common case -- a plain eager call
    (``plain_eager``), x a float tensor of rank >= 2, eps a float >= 0, ``act`` "none" or "relu" without
    GeneralRelu arguments, running stats given -- in a few inline tests, then the checks that stay per call
    (the four per-channel tensors, :func:`_check_params`) and :func:`_forward_eager`, as batch_norm does -- or,
    on the C++ backend, one call to its eval op, which makes those checks and the autograd node in C++ (the
    Python autograd.Function, run cold, cost ~25 us a call at 16x64x32x32; the C++ node 1-2 us)."""
    if not (type(eps) is float and eps >= 0 and (act == "none" or act == "relu") and leak is None and sub is None
            and maxv is None and running_mean is not None and running_var is not None
            and (backend is None or type(backend) is str) and plain_eager(x, weight, bias, running_mean, running_var)
            and x.dtype in FLOAT_DTYPES and x.dim() >= 2):
        return None
    name = check_backend_name(backend, "batch_norm")
    k, op = _CPU_EVAL
    if _USE_CPP_EVAL and op is not None and x.device.type == "cpu" and kernels(name, "cpu") is k:
        # the C++ backend: checks, kernel and autograd node in one call (csrc/cpu/batch_norm.cpp, bn_eval).
        # Its checks are _check_params' rules (shape, device, dtype of the four per-channel tensors) in C++:
        # on a refusal, the caller's batch_norm checks again and raises its own words (a reshape hint...).
        try:
            return op(x, weight, bias, running_mean, running_var, eps, act, 0.0, 0.0, math.inf, "cpu")
        except (TypeError, ValueError, RuntimeError):
            return None
    _check_params(x, weight, bias, running_mean, running_var, "batch_norm")
    return _forward_eager(x, weight, bias, running_mean, running_var, False, eps, act, 0.0, 0.0, math.inf, name)[0]


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------

def batch_norm(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
               running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, training: bool = False, momentum: Optional[float] = 0.1,
               eps: float = 1e-5, act: str = "none", leak: Optional[float] = None, sub: Optional[float] = None,
               maxv: Optional[float] = None, num_batches_tracked: Optional[torch.Tensor] = None,
               backend: Optional[str] = None) -> torch.Tensor:
    """``torch.nn.functional.batch_norm`` with pydl kernels and an optional fused activation.

    ``training=True``: normalise with the batch's statistics and, if running stats are given, update them in
    place (momentum, or a cumulative average over ``num_batches_tracked`` -- already incremented by the
    caller, as torch's modules do -- when ``momentum`` is None). ``training=False``: use the running stats.
    ``act``: ``"none"``, ``"relu"`` or ``"general_relu"`` (fastai's GeneralRelu with ``leak``, ``sub``,
    ``maxv``; None = off). ``backend``: as everywhere in pydl (None = the current default).
    """
    op = "batch_norm"
    # every argument is checked before any work (and before the op's schema would refuse a type unclearly)
    name = check_backend_name(backend, op)
    leak_, sub_, maxv_ = act_params(act, leak, sub, maxv, op)
    training = check_bool(training, op, "training")
    _check_x(x, op)
    _check_params(x, weight, bias, running_mean, running_var, op)
    if (running_mean is None) != (running_var is None):
        raise ValueError("pydl.batch_norm: pass both running_mean and running_var, or neither")
    check_eps(eps, training, op)
    eager = plain_eager(x, weight, bias, running_mean, running_var, num_batches_tracked)
    update = training and running_mean is not None
    if update:
        momentum = check_momentum(momentum, op)
        # the eager door calls the update kernel directly, so the value check is here; otherwise the op does it
        check_num_batches_tracked(num_batches_tracked, momentum, op, read_value=eager)
    rm, rv = (None, None) if training else (running_mean, running_var)
    if eager:  # the rest of the op's checks (check_forward_args), which the door skips
        check_mode(x, running_mean, running_var, training, op)
        _activation.check_act(act, leak_, sub_, maxv_, op)
        y, mean, _invstd, var = _forward_eager(x, weight, bias, rm, rv, training, float(eps), act, leak_, sub_,
                                               maxv_, name)
        if update:
            kernels(name, x.device.type).update_running(running_mean, running_var, mean, var, channel_count(x),
                                                        momentum, num_batches_tracked)
        return y
    y, mean, _invstd, var = torch.ops.pydl.batch_norm(x, weight, bias, rm, rv, training, float(eps), act, leak_,
                                                      sub_, maxv_, name)
    if update:
        torch.ops.pydl.batch_norm_update_running(running_mean, running_var, mean, var, channel_count(x), momentum,
                                                 num_batches_tracked, name)
    return y


def _check_tensors(op, **tensors):
    """The separable steps' tensor arguments are tensors (their shapes and dtypes are the op's to check)."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"pydl.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def batch_norm_stats(x: torch.Tensor, backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, M2) of x in the accumulation dtype; the count is N * prod(spatial)."""
    _check_x(x, "batch_norm_stats")  # before the schema: a list would get its dump, not pydl's TypeError
    return torch.ops.pydl.batch_norm_stats(x, check_backend_name(backend, "batch_norm_stats"))


def batch_norm_apply(x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, weight: Optional[torch.Tensor] = None,
                     bias: Optional[torch.Tensor] = None, act: str = "none", leak: Optional[float] = None,
                     sub: Optional[float] = None, maxv: Optional[float] = None,
                     backend: Optional[str] = None) -> torch.Tensor:
    """y = act((x - mean) * invstd * weight + bias), per channel (no autograd: a building block)."""
    leak_, sub_, maxv_ = act_params(act, leak, sub, maxv, "batch_norm_apply")
    _check_tensors("batch_norm_apply", x=x, mean=mean, invstd=invstd)
    return torch.ops.pydl.batch_norm_apply(x, mean, invstd, weight, bias, act, leak_, sub_, maxv_,
                                           check_backend_name(backend, "batch_norm_apply"))


def batch_norm_backward_reduce(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                               act: str = "none", leak: Optional[float] = None, sub: Optional[float] = None,
                               maxv: Optional[float] = None,
                               backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum(dz), sum(dz * (x - mean))) per channel, dz = act'(z) * dy: one pass over dy and x."""
    leak_, sub_, maxv_ = act_params(act, leak, sub, maxv, "batch_norm_backward_reduce")
    _check_tensors("batch_norm_backward_reduce", dy=dy, x=x, mean=mean, invstd=invstd)
    return torch.ops.pydl.batch_norm_backward_reduce(dy, x, mean, invstd, weight, bias, act, leak_, sub_, maxv_,
                                                     check_backend_name(backend, "batch_norm_backward_reduce"))


def batch_norm_backward_elemt(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                              weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], sum_dz: torch.Tensor,
                              sum_dz_xmu: torch.Tensor, count: int, act: str = "none", leak: Optional[float] = None,
                              sub: Optional[float] = None, maxv: Optional[float] = None,
                              backend: Optional[str] = None) -> torch.Tensor:
    """dx from the two (possibly all-reduced) sums and the total per-channel count."""
    op = "batch_norm_backward_elemt"
    leak_, sub_, maxv_ = act_params(act, leak, sub, maxv, op)
    _check_tensors(op, dy=dy, x=x, mean=mean, invstd=invstd, sum_dz=sum_dz, sum_dz_xmu=sum_dz_xmu)
    return torch.ops.pydl.batch_norm_backward_elemt(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xmu,
                                                    check_int(count, op, "count", 0), act, leak_, sub_, maxv_,
                                                    check_backend_name(backend, op))
