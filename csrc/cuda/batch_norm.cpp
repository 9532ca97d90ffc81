// ATen glue for the CUDA batch_norm kernels: checks, layout, allocation, stream. The kernels themselves are in
// batch_norm.cu and see only raw pointers and sizes (batch_norm.h). Same ops and schemas as the CPU backend
// (csrc/cpu/batch_norm.cpp), in the pydl_cuda namespace.
#include <torch/library.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "activation.h"
#include "common.h"
#include "schemas.h"
#include "cuda/common_cuda.h"
#include "cuda/batch_norm.h"

namespace pydl {
namespace {

constexpr const char* kOp = "batch_norm";
using cuda::BnArgs;

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

bool is_channels_last(const at::Tensor& x) {  // the same rule as pydl/ops/batch_norm.py
  if (x.dim() == 2) return x.is_contiguous();
  if (x.dim() < 3 || x.is_contiguous()) return false;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < x.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  return x.permute(perm).is_contiguous();
}

void check_x(const at::Tensor& x, const char* name) {
  check_device(x, c10::DeviceType::CUDA, kOp, name);
  check_floating(x, kOp, name);
  PYDL_CHECK_VALUE(x.dim() >= 2, kOp, ": ", name, " must have shape (N, C, ...) with rank >= 2, got rank ", x.dim());
}

void check_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return;
  PYDL_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(1), kOp, ": ", name, " must have shape (", x.size(1),
                   ",) (one value per channel of x), got ", t->sizes());
  PYDL_CHECK_VALUE(t->device() == x.device(), kOp, ": ", name, " is on ", t->device(), " but x is on ", x.device());
  const bool mixed = (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) &&
                     t->scalar_type() == at::kFloat;
  PYDL_CHECK_TYPE(t->scalar_type() == x.scalar_type() || mixed, kOp, ": ", name, " has dtype ", t->scalar_type(),
                  " but x is ", x.scalar_type(), "; ", name, " must have x's dtype (or float32 for float16/bfloat16 x)");
}

void check_stat(const at::Tensor& t, const char* name, const at::Tensor& x) {
  PYDL_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(1) && t.device() == x.device() &&
                       t.scalar_type() == acc_type(x),
                   kOp, ": ", name, " must be a (", x.size(1), ",) ", acc_type(x), " tensor on ", x.device(), ", got ",
                   t.sizes(), " ", t.scalar_type(), " on ", t.device());
}

int act_kind(const std::string& act, double leak, double sub, double maxv) {
  int kind = act == "none" ? kActNone : act == "relu" ? kActRelu : act == "general_relu" ? kActGeneralRelu : -1;
  PYDL_CHECK_VALUE(kind >= 0, kOp, ": act must be one of ('none', 'relu', 'general_relu'), got '", act, "'");
  PYDL_CHECK_VALUE(kind != kActGeneralRelu || (leak >= 0 && std::isfinite(sub) && !std::isnan(maxv)), kOp,
                   ": general_relu needs leak >= 0, finite sub and a maxv, got leak=", leak, ", sub=", sub,
                   ", maxv=", maxv);
  return kind;
}

// The common part of every op: a dense x, its geometry, the activation, the parameters (contiguous).
struct Prep {
  at::Tensor x, weight, bias;  // weight/bias undefined when absent
  BnArgs a;
};

Prep prepare(const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
             const std::string& act, double leak, double sub, double maxv) {
  check_x(x_in, "x");
  check_param(weight, "weight", x_in);
  check_param(bias, "bias", x_in);
  Prep p;
  p.a.act = act_kind(act, leak, sub, maxv);
  p.a.leak = leak; p.a.sub = sub; p.a.maxv = maxv;
  p.x = (x_in.is_contiguous() || is_channels_last(x_in)) ? x_in : x_in.contiguous();
  p.a.N = p.x.size(0);
  p.a.C = p.x.size(1);
  p.a.L = 1;
  for (int64_t d = 2; d < p.x.dim(); ++d) p.a.L *= p.x.size(d);
  p.a.cl = is_channels_last(p.x);
  p.a.dtype = to_dtype(p.x.scalar_type(), kOp);
  p.a.param_dtype = p.a.dtype;
  p.a.x = p.x.data_ptr();
  if (weight.has_value() && weight->defined()) {
    p.weight = weight->contiguous();
    p.a.weight = p.weight.data_ptr();
    p.a.param_dtype = to_dtype(p.weight.scalar_type(), kOp);
  }
  if (bias.has_value() && bias->defined()) {
    p.bias = bias->to(p.weight.defined() ? p.weight.scalar_type() : bias->scalar_type()).contiguous();
    p.a.bias = p.bias.data_ptr();
    p.a.param_dtype = to_dtype(p.bias.scalar_type(), kOp);
  }
  return p;
}

at::Tensor workspace(BnArgs& a, const at::Tensor& x) {
  a.splits = cuda::bn_splits(a, cuda_sm_count(x.get_device()));
  auto ws = at::empty({cuda::bn_workspace_bytes(a)}, x.options().dtype(at::kByte));
  a.workspace = ws.data_ptr();
  return ws;
}

// The one-read forward/backward (x kept in shared memory across a grid barrier) unless PYDL_BN_ONEPASS=0.
bool onepass_enabled() {
  const char* env = std::getenv("PYDL_BN_ONEPASS");
  return !(env && env[0] == '0');
}

at::Tensor like(const at::Tensor& dy, const at::Tensor& x) {  // dy in x's dense layout
  return dy.strides() == x.strides() ? dy : at::empty_like(x).copy_(dy);
}

// ---------------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x_in) {
  Prep p = prepare(x_in, std::nullopt, std::nullopt, "none", 0, 0, 0);
  const c10::cuda::CUDAGuard guard(p.x.device());
  auto mean = at::zeros({p.a.C}, p.x.options().dtype(acc_type(p.x)));
  auto m2 = at::zeros({p.a.C}, p.x.options().dtype(acc_type(p.x)));
  if (p.a.N * p.a.L > 0 && p.a.C > 0) {
    auto ws = workspace(p.a, p.x);
    p.a.mean = mean.data_ptr();
    p.a.var = m2.data_ptr();
    check_launch(kOp, cuda::bn_stats_launch(p.a, false, c10::cuda::getCurrentCUDAStream()), "stats");
  }
  return {mean, m2};
}

at::Tensor bn_apply(const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& invstd,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                    const std::string& act, double leak, double sub, double maxv) {
  Prep p = prepare(x_in, weight, bias, act, leak, sub, maxv);
  check_stat(mean, "mean", x_in);
  check_stat(invstd, "invstd", x_in);
  const c10::cuda::CUDAGuard guard(p.x.device());
  auto y = at::empty_like(p.x);
  const at::Tensor m = mean.contiguous(), s = invstd.contiguous();
  auto ws = workspace(p.a, p.x);
  p.a.mean = const_cast<void*>(m.data_ptr());
  p.a.invstd = const_cast<void*>(s.data_ptr());
  p.a.out = y.data_ptr();
  check_launch(kOp, cuda::bn_apply_launch(p.a, c10::cuda::getCurrentCUDAStream()), "apply");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool use_batch_stats, double eps, const std::string& act, double leak, double sub, double maxv) {
  Prep p = prepare(x_in, weight, bias, act, leak, sub, maxv);
  check_param(running_mean, "running_mean", x_in);
  check_param(running_var, "running_var", x_in);
  // torch's rule: eps > 0 in training (a constant channel's var is 0), >= 0 in eval
  PYDL_CHECK_VALUE(use_batch_stats ? eps > 0 : eps >= 0, kOp, ": eps must be > 0 in training, >= 0 in eval, got ",
                   eps, use_batch_stats ? " in training" : " in eval");
  const bool have_running = running_mean.has_value() && running_mean->defined() && running_var.has_value() &&
                            running_var->defined();
  PYDL_CHECK_VALUE(use_batch_stats || have_running, kOp,
                   ": eval mode (use_batch_stats=False) needs running_mean and running_var");
  PYDL_CHECK_VALUE(!use_batch_stats || p.a.N * p.a.L != 1,
                   "Expected more than 1 value per channel when training, got input size ", p.x.sizes());
  const c10::cuda::CUDAGuard guard(p.x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = acc_type(p.x);
  auto y = at::empty_like(p.x);
  auto mean = at::empty({p.a.C}, p.x.options().dtype(acc));
  auto invstd = at::empty({p.a.C}, p.x.options().dtype(acc));
  auto var = at::empty({p.a.C}, p.x.options().dtype(acc));
  auto ws = workspace(p.a, p.x);
  p.a.mean = mean.data_ptr();
  p.a.invstd = invstd.data_ptr();
  p.a.var = var.data_ptr();
  p.a.eps = eps;
  p.a.out = y.data_ptr();
  at::Tensor rm, rv;
  if (!use_batch_stats) {
    // running stats share the parameters' dtype rule; read them in their own dtype
    rm = running_mean->contiguous();
    rv = running_var->to(rm.scalar_type()).contiguous();
    BnArgs e = p.a;
    e.running_mean = rm.data_ptr();
    e.running_var = rv.data_ptr();
    e.param_dtype = to_dtype(rm.scalar_type(), kOp);
    check_launch(kOp, cuda::bn_eval_stats_launch(e, stream), "eval stats");
  } else if (p.a.N * p.a.L > 0) {
    // One read of x when it fits in shared memory (see bn_forward_onepass_launch); PYDL_BN_ONEPASS=0 turns it
    // off (the GPU tests run both paths). Any refusal falls back to the two-kernel forward.
    if (onepass_enabled()) {
      const cudaError_t err = cuda::bn_forward_onepass_launch(p.a, stream);
      if (err == cudaSuccess) return {y, mean, invstd, var};
      (void)cudaGetLastError();  // a refused launch is not a sticky error: clear it, take two passes
    }
    check_launch(kOp, cuda::bn_stats_launch(p.a, true, stream), "stats");
  } else {  // empty batch: nothing to normalise; the same placeholders as the other backends
    mean.zero_();
    var.zero_();
    invstd.fill_(eps > 0 ? 1.0 / std::sqrt(eps) : INFINITY);
  }
  check_launch(kOp, cuda::bn_apply_launch(p.a, stream), "apply");
  return {y, mean, invstd, var};
}

void bn_update_running(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                       const at::Tensor& var, int64_t count, std::optional<double> momentum,
                       const std::optional<at::Tensor>& num_batches_tracked) {
  const int64_t C = mean.numel();
  const at::Tensor* all[] = {&running_mean, &running_var, &mean, &var};
  for (const at::Tensor* t : all) {
    check_device(*t, c10::DeviceType::CUDA, "batch_norm_update_running", "running stats");
    check_floating(*t, "batch_norm_update_running", "running stats");
    PYDL_CHECK_VALUE(t->dim() == 1 && t->numel() == C && t->device() == mean.device(),
                     "batch_norm_update_running: running_mean, running_var, mean and var must all be (", C,
                     ",) tensors on one device, got ", t->sizes(), " on ", t->device());
  }
  PYDL_CHECK_VALUE(var.scalar_type() == mean.scalar_type() &&
                       (mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble),
                   "batch_norm_update_running: mean and var must both be float32 or float64");
  PYDL_CHECK_VALUE(running_var.scalar_type() == running_mean.scalar_type(),
                   "batch_norm_update_running: running_mean and running_var must share a dtype");
  const bool have_nbt = num_batches_tracked.has_value() && num_batches_tracked->defined();
  PYDL_CHECK_VALUE(momentum.has_value() || have_nbt,
                   "batch_norm_update_running: momentum=None (cumulative average) needs num_batches_tracked");
  PYDL_CHECK_VALUE(!momentum.has_value() || std::isfinite(*momentum),
                   "batch_norm_update_running: momentum must be a finite float or None, got ", momentum.value_or(0));
  PYDL_CHECK_VALUE(count >= 0, "batch_norm_update_running: count must be an int >= 0, got ", count);
  if (!momentum.has_value()) {
    // the factor is 1 / num_batches_tracked: 0 would turn the running stats into NaN. Reading it syncs with
    // the device, as torch's module does (float(num_batches_tracked)); only momentum=None pays for it.
    const at::Tensor& t = *num_batches_tracked;
    PYDL_CHECK_VALUE(t.numel() == 1 && !t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool,
                     "batch_norm_update_running: num_batches_tracked must be a one-element integer tensor, got ",
                     t.sizes(), " ", t.scalar_type());
    const int64_t v = t.item<int64_t>();
    PYDL_CHECK_VALUE(v >= 1, "batch_norm_update_running: num_batches_tracked must be >= 1 with momentum=None "
                     "(the running stats average 1 / num_batches_tracked of each batch), got ", v);
  }
  if (count == 0 || C == 0) return;  // an empty batch leaves the running stats alone (as torch does)
  const c10::cuda::CUDAGuard guard(mean.device());
  at::Tensor nbt;
  if (!momentum.has_value()) {
    nbt = num_batches_tracked->to(mean.device(), at::kLong).contiguous();
  }
  // (C,) buffers are contiguous unless someone sliced them; then work on a copy and write it back
  at::Tensor rm = running_mean.is_contiguous() ? running_mean : running_mean.contiguous();
  at::Tensor rv = running_var.is_contiguous() ? running_var : running_var.contiguous();
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  const double bessel = count > 1 ? double(count) / double(count - 1) : 1.0;
  check_launch(kOp,
               cuda::bn_update_running_launch(rm.data_ptr(), rv.data_ptr(), to_dtype(rm.scalar_type(), kOp),
                                              m.data_ptr(), v.data_ptr(), m.scalar_type() == at::kDouble,
                                              nbt.defined() ? nbt.data_ptr<int64_t>() : nullptr,
                                              momentum.value_or(0.0), bessel, C, c10::cuda::getCurrentCUDAStream()),
               "running update");
  if (!rm.is_same(running_mean)) running_mean.copy_(rm);
  if (!rv.is_same(running_var)) running_var.copy_(rv);
}

Prep prepare_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean,
                      const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, const std::string& act, double leak, double sub,
                      double maxv, at::Tensor& dy, at::Tensor& m, at::Tensor& s) {
  check_x(dy_in, "dy");
  Prep p = prepare(x_in, weight, bias, act, leak, sub, maxv);
  PYDL_CHECK_VALUE(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type() &&
                       dy_in.device() == x_in.device(),
                   kOp, ": dy must match x (shape ", x_in.sizes(), ", ", x_in.scalar_type(), "), got ", dy_in.sizes(),
                   " ", dy_in.scalar_type());
  check_stat(mean, "mean", x_in);
  check_stat(invstd, "invstd", x_in);
  dy = like(dy_in, p.x);
  m = mean.contiguous();
  s = invstd.contiguous();
  p.a.dy = dy.data_ptr();
  p.a.mean = m.data_ptr();
  p.a.invstd = s.data_ptr();
  return p;
}

std::tuple<at::Tensor, at::Tensor> bn_backward_reduce(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                      const at::Tensor& mean, const at::Tensor& invstd,
                                                      const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias, const std::string& act,
                                                      double leak, double sub, double maxv) {
  at::Tensor dy, m, s;
  Prep p = prepare_backward(dy_in, x_in, mean, invstd, weight, bias, act, leak, sub, maxv, dy, m, s);
  const c10::cuda::CUDAGuard guard(p.x.device());
  const auto acc = acc_type(p.x);
  auto s1 = at::zeros({p.a.C}, p.x.options().dtype(acc));
  auto s2 = at::zeros({p.a.C}, p.x.options().dtype(acc));
  auto dw = at::zeros({p.a.C}, p.x.options().dtype(acc));
  if (p.a.N * p.a.L > 0 && p.a.C > 0) {
    auto ws = workspace(p.a, p.x);
    p.a.sum_dz = s1.data_ptr();
    p.a.sum_dz_xmu = s2.data_ptr();
    p.a.dweight = dw.data_ptr();
    check_launch(kOp, cuda::bn_reduce_launch(p.a, c10::cuda::getCurrentCUDAStream()), "backward reduce");
  }
  return {s1, s2};
}

at::Tensor bn_backward_elemt(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean,
                             const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& sum_dz,
                             const at::Tensor& sum_dz_xmu, int64_t count, const std::string& act, double leak,
                             double sub, double maxv) {
  at::Tensor dy, m, s;
  Prep p = prepare_backward(dy_in, x_in, mean, invstd, weight, bias, act, leak, sub, maxv, dy, m, s);
  check_stat(sum_dz, "sum_dz", x_in);
  check_stat(sum_dz_xmu, "sum_dz_xmu", x_in);
  PYDL_CHECK_VALUE(count >= 0, "batch_norm_backward_elemt: count must be an int >= 0, got ", count);
  const c10::cuda::CUDAGuard guard(p.x.device());
  const at::Tensor a1 = sum_dz.contiguous(), a2 = sum_dz_xmu.contiguous();
  auto dx = at::empty_like(p.x);
  auto ws = workspace(p.a, p.x);
  p.a.sum_dz = const_cast<void*>(a1.data_ptr());
  p.a.sum_dz_xmu = const_cast<void*>(a2.data_ptr());
  p.a.count = count;
  p.a.use_batch_stats = true;
  p.a.out = dx.data_ptr();
  check_launch(kOp, cuda::bn_elemt_launch(p.a, c10::cuda::getCurrentCUDAStream()), "backward elemt");
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& invstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, bool use_batch_stats,
    const std::string& act, double leak, double sub, double maxv, bool input_grad) {
  at::Tensor dy, m, s;
  Prep p = prepare_backward(dy_in, x_in, mean, invstd, weight, bias, act, leak, sub, maxv, dy, m, s);
  const c10::cuda::CUDAGuard guard(p.x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = acc_type(p.x);
  auto s1 = at::zeros({p.a.C}, p.x.options().dtype(acc));
  auto s2 = at::zeros({p.a.C}, p.x.options().dtype(acc));
  auto dw = at::zeros({p.a.C}, p.x.options().dtype(acc));
  auto ws = workspace(p.a, p.x);
  p.a.sum_dz = s1.data_ptr();
  p.a.sum_dz_xmu = s2.data_ptr();
  p.a.dweight = dw.data_ptr();
  const int64_t n = p.a.N * p.a.L;
  at::Tensor dx = input_grad ? at::empty_like(p.x) : at::empty({0}, p.x.options());
  p.a.out = input_grad ? dx.data_ptr() : nullptr;
  p.a.count = n;
  p.a.use_batch_stats = use_batch_stats;
  if (input_grad && use_batch_stats && n > 0 && p.a.C > 0 && onepass_enabled()) {
    const cudaError_t err = cuda::bn_backward_onepass_launch(p.a, stream);
    if (err == cudaSuccess) return {dx, dw, s1};
    (void)cudaGetLastError();  // refused (does not fit, no cooperative launch): two passes
  }
  if (n > 0 && p.a.C > 0) check_launch(kOp, cuda::bn_reduce_launch(p.a, stream), "backward reduce");
  if (input_grad) check_launch(kOp, cuda::bn_elemt_launch(p.a, stream), "backward elemt");
  return {dx, dw, s1};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cuda, m) {
  for (const char* s : pydl::schema::batch_norm) m.def(s);  // csrc/schemas.h
}

TORCH_LIBRARY_IMPL(pydl_cuda, CUDA, m) {
  m.impl("batch_norm_forward", &pydl::bn_forward);
  m.impl("batch_norm_update_running", &pydl::bn_update_running);
  m.impl("batch_norm_backward", &pydl::bn_backward);
  m.impl("batch_norm_stats", &pydl::bn_stats);
  m.impl("batch_norm_apply", &pydl::bn_apply);
  m.impl("batch_norm_backward_reduce", &pydl::bn_backward_reduce);
  m.impl("batch_norm_backward_elemt", &pydl::bn_backward_elemt);
}
