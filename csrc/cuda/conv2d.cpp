// ATen glue for the CUDA conv2d kernels: checks, output layout, allocation, stream. The kernels are in
// conv2d.cu and see only raw pointers, sizes and strides.
#include <torch/library.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>

#include "activation.h"
#include "common.h"
#include "conv2d_args.h"
#include "cuda/common_cuda.h"
#include "cuda/conv2d.h"

namespace pydl {
namespace {

int act_code(c10::string_view act) {
  if (act == "none") return kActNone;
  if (act == "relu") return kActRelu;
  if (act == "general_relu") return kActGeneralRelu;
  PYDL_CHECK_VALUE(false, "conv2d: act must be none, relu or general_relu, got ", std::string(act));
  return 0;
}

// channels_last in -> channels_last out (pydl/ops/conv2d.py: out_memory_format)
at::MemoryFormat out_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

cuda::ConvArgs make_args(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups, int act, double leak, double sub, double maxv,
                         bool allow_tf32) {
  cuda::ConvArgs a{};
  a.dtype = to_dtype(x.scalar_type(), "conv2d");
  a.N = x.size(0); a.C = x.size(1); a.H = x.size(2); a.W = x.size(3);
  a.Co = w.size(0); a.Cg = w.size(1); a.KH = w.size(2); a.KW = w.size(3);
  a.G = groups; a.Cog = a.Co / groups;
  a.sh = stride[0]; a.sw = stride[1]; a.ph = padding[0]; a.pw = padding[1]; a.dh = dilation[0]; a.dw = dilation[1];
  a.Ho = (a.H + 2 * a.ph - a.dh * (a.KH - 1) - 1) / a.sh + 1;
  a.Wo = (a.W + 2 * a.pw - a.dw * (a.KW - 1) - 1) / a.sw + 1;
  for (int d = 0; d < 4; ++d) a.sx[d] = x.stride(d);
  a.ci_inner = x.stride(1) == 1 && a.C > 1;
  a.act = act; a.leak = leak; a.sub = sub; a.maxv = maxv;
  a.allow_tf32 = allow_tf32;
  a.x = x.data_ptr();
  a.w = w.data_ptr();
  return a;
}

std::tuple<at::Tensor, at::Tensor> conv2d_cuda(const at::Tensor& x, const at::Tensor& w_in,
                                               const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                               c10::string_view act, double leak, double sub, double maxv,
                                               bool save_preact, bool allow_tf32) {
  check_conv2d_args(x, w_in, b, stride, padding, dilation, groups, c10::DeviceType::CUDA, "conv2d");
  const int code = act_code(act);
  if (x.size(1) == 0) {  // torch's answer for an input without channels: an empty (N, 0, Ho, Wo) output
    const auto out = conv2d_out_shape(x, w_in, stride, padding, dilation);
    const at::Tensor y = at::empty(out, x.options().memory_format(out_format(x)));
    return {y, save_preact && code == kActGeneralRelu ? at::empty_like(y) : at::empty({0}, x.options())};
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w = w_in.contiguous();
  const at::Tensor bias = b.has_value() ? b->contiguous() : at::Tensor();
  cuda::ConvArgs a = make_args(x, w, stride, padding, dilation, groups, code, leak, sub, maxv, allow_tf32);
  at::Tensor y = at::empty({a.N, a.Co, a.Ho, a.Wo}, x.options().memory_format(out_format(x)));
  const bool keep_z = save_preact && code == kActGeneralRelu;
  at::Tensor z = keep_z ? at::empty_like(y) : at::empty({0}, x.options());
  if (y.numel() == 0) return {y, z};
  for (int d = 0; d < 4; ++d) a.sy[d] = y.stride(d);
  a.b = b.has_value() ? bias.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.z = keep_z ? z.data_ptr() : nullptr;
  a.save_z = keep_z;
  const cudaError_t err = cuda::conv2d_forward_launch(a, c10::cuda::getCurrentCUDAStream());
  check_launch("conv2d", err, "launch");
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_in, const c10::optional<at::Tensor>& z_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view act,
    double leak, double sub, double maxv, std::array<bool, 3> mask, bool allow_tf32) {
  check_conv2d_args(x, w_in, c10::nullopt, stride, padding, dilation, groups, c10::DeviceType::CUDA,
                    "conv2d_backward");
  const int code = act_code(act);
  check_conv2d_backward_args(grad_y, z_in, x, conv2d_out_shape(x, w_in, stride, padding, dilation),
                             code != kActNone);
  if (x.size(1) == 0) {  // no input channel: the output was empty and constant, every gradient is zero
    const at::Tensor none = at::empty({0}, x.options());
    return {mask[0] ? at::zeros_like(x) : none, mask[1] ? at::zeros_like(w_in) : none,
            mask[2] ? at::zeros({w_in.size(0)}, x.options()) : none};
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w = w_in.contiguous();
  cuda::ConvArgs a = make_args(x, w, stride, padding, dilation, groups, code, leak, sub, maxv, allow_tf32);
  // grad_y and z share one set of strides (the kernels address both with sy)
  const at::Tensor dy = grad_y.contiguous(out_format(x));
  at::Tensor zs;
  if (code != kActNone) zs = z_in->contiguous(out_format(x));
  for (int d = 0; d < 4; ++d) a.sy[d] = dy.stride(d);
  a.dy = dy.data_ptr();
  a.zs = code != kActNone ? zs.data_ptr() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor gx = at::empty({0}, x.options()), gw = at::empty({0}, x.options()), gb = at::empty({0}, x.options());

  if (mask[0]) {
    gx = at::empty(x.sizes(), x.options().memory_format(out_format(x)));
    for (int d = 0; d < 4; ++d) a.sdx[d] = gx.stride(d);
    a.dx = gx.data_ptr();
    if (gx.numel() > 0) {
      const cudaError_t err = cuda::conv2d_dgrad_launch(a, stream);
      check_launch("conv2d", err, "grad_x launch");
    }
  }
  if (mask[1]) {
    const int64_t P = a.N * a.Ho * a.Wo, K = a.Cg * a.KH * a.KW;
    a.split = cuda::conv2d_wgrad_split_for(a, cuda_sm_count(x.get_device()));
    a.per_split = P > 0 ? (P + a.split - 1) / a.split : 1;
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor ws = at::empty({a.split, a.Co, K}, x.options().dtype(acc));
    if (P == 0) ws.zero_();
    a.ws = ws.data_ptr();
    if (P > 0) {
      const cudaError_t err = cuda::conv2d_wgrad_launch(a, stream);
      check_launch("conv2d", err, "grad_w launch");
    }
    // the split partials, added in a fixed order (split x the weight's size: tiny next to the GEMMs)
    gw = ws.sum(0).view(w.sizes()).to(x.scalar_type());
  }
  if (mask[2]) {
    gb = at::empty({a.Co}, x.options());
    a.gb = gb.data_ptr();
    const cudaError_t err = cuda::conv2d_bgrad_launch(a, stream);
    check_launch("conv2d", err, "grad_b launch");
  }
  return {gx, gw, gb};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cuda, m) {
  m.def("conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "str act, float leak, float sub, float maxv, bool save_preact, bool allow_tf32) -> (Tensor, Tensor)");
  m.def("conv2d_backward(Tensor grad_y, Tensor x, Tensor w, Tensor? z, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, str act, float leak, float sub, float maxv, bool[3] output_mask, "
        "bool allow_tf32) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pydl_cuda, CUDA, m) {
  m.impl("conv2d", &pydl::conv2d_cuda);
  m.impl("conv2d_backward", &pydl::conv2d_backward_cuda);
}
