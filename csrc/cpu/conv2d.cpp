// conv2d on the CPU: forward (with a fused bias + activation epilogue) and backward (grad input, grad weight,
// grad bias), for NCHW and channels_last, fp32 / fp64 / fp16 / bf16.
//
// The algorithm is tiled im2col + GEMM ("lowering" a convolution to a matrix product):
//
//   per (image n, group g, tile of TL output pixels):
//     1. im2col  -- gather, into a small buffer that stays in L2, the K = Cg*kh*kw input values every output
//                   pixel of the tile reads (zeros where a tap falls in the padding);
//     2. GEMM    -- multiply by the weight, (Cout/g x K) @ (K x TL), with at::mm: the ONE building block
//                   borrowed from ATen (it calls MKL/oneDNN's sgemm/dgemm). Everything around it is ours.
//     3. epilogue -- read the GEMM tile while it is still in cache, add the bias, apply the activation, and
//                   write y (and z, the pre-activation, when the backward will need it) in the output's
//                   layout. Fusing this loop saves a full read + write of the output per op we fused.
//
// Why tiles rather than one big im2col matrix: for a 3x3 conv the im2col matrix is 9x the input. Built whole
// it goes to DRAM and back (tens of MB for a ResNet layer); built one tile at a time it never leaves L2, and
// the copy costs a few percent of the GEMM instead of doubling the run time.
//
// Whole batch instead of tiles (gemm.cpp, use_whole): when the tiles would be few or narrow (small images at
// a small batch: 256 channels at 14x14, N=2, is 392 pixels), tasks are too few to balance the threads and each
// thin GEMM re-packs the whole weight. Then, if the buffers stay <= 16 MB, the NHWC im2col covers every pixel
// of the batch and ONE GEMM per group runs with all the threads (MKL threads it). PYDL_CONV_WHOLE=0|1 forces.
//
// Layouts. NCHW: an output tile is a run of pixels of one image, so the buffer is (K x TL) with the taps as
// rows: each row is a strided copy of one input row (contiguous for stride 1: vectorised), and the GEMM gives
// (Cout/g x TL), i.e. NCHW rows of the output. channels_last (NHWC): the buffer is (TL x K') with
// K' = (kh, kw, Cg) -- each tap is a contiguous run of Cg channels -- and the weight permuted to
// (Cout, kh, kw, Cg) to match; the GEMM gives (TL x Cout/g), i.e. NHWC rows, and a tile may span images.
// Small NCHW images (rows of <= 32 pixels, >= 16 channels per group) take the NHWC im2col too, from one
// channels_last copy of x: short rows make the NCHW copy all bookkeeping (see pick_im2col_nhwc).
//
// Backward, with dz = act'(z) * dy (computed once, in the output's layout, together with grad_bias):
//   grad_w[g] += dz_tile (Cout/g x TL) @ im2col_tile^T (TL x K)  -- per-thread partial sums, added in order;
//   grad_x    = col2im(W_g^T @ dz_tile): each tap's value added back into the input pixel it came from.
//     col2im writes overlap between tiles of one image (the halo), so a grad-x task owns a whole (n, g)
//     image: tasks never write the same element and there are no atomics.
//
// Depthwise convs (one input and one output channel per group) have K = kh*kw = 9: a GEMM per channel would be
// all overhead. They are direct convolutions instead, forward and backward: for NCHW at stride 1 each plane is
// zero-padded once so that every tap is one long shifted axpy / dot product over the flat plane; for NHWC the
// loops run along the channels.
//
// Parallelism: at::parallel_for over tasks, each GEMM single-threaded inside it (MKL does not nest). When
// there are fewer tasks than threads (batch 1, one group, small image) the tasks run in turn and each GEMM
// uses all the threads itself.
//
// 1x1 stride-1 convs have no im2col at all: x is the GEMM operand, and the backward is GEMMs straight into
// grad_w (dz @ x^T summed over images) and grad_x (W^T @ dz, col2im being the identity).
//
// Files: this one holds the ops' entry points (argument checks, layouts, dispatch to a path) and their
// registration; the paths are parts in csrc/cpu/conv2d/ -- gemm.cpp (im2col + GEMM, forward and both weight
// and input gradients), im2col.cpp, epilogue.{h,cpp}, depthwise.cpp -- declared in conv2d/conv2d_internal.h.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "activation.h"
#include "common.h"
#include "conv2d/conv2d_internal.h"
#include "conv2d_args.h"
#include "conv2d/winograd.h"

namespace pydl {
namespace conv_cpu {
namespace {

// NCHW input, which im2col? The NCHW im2col copies one output row (Wo values) per (tap, row): for small
// images (ResNet's 28x28, 14x14, 7x7) those runs are short and the per-run bookkeeping costs more than the
// copy. Transposing x to channels_last once (one pass over the input) turns every tap into a contiguous run
// of Cg channels instead. Worth it when rows are short and channel runs long. At stride 2 the transpose
// pays off only for the shortest rows: the NCHW im2col's stride-2 copy vectorises (im2col.cpp) and needs no
// copy of x, so it wins down to Wo = 14 (measured, 1 thread, fp32: 64@56->128 forward 0.84x vs 0.77x oneDNN,
// grad_x 1.58x vs 0.83x at N=8; 128@28->256 forward 0.80x vs 0.73x; at 256@14->512 the NHWC one is ahead).
// PYDL_CONV_IM2COL=nchw|nhwc forces one or the other (try both on your machine).
bool pick_im2col_nhwc(const Geom& g) {
  static const char* force = std::getenv("PYDL_CONV_IM2COL");
  if (force != nullptr && std::string(force) == "nchw") return false;
  if (force != nullptr && std::string(force) == "nhwc") return true;
  return g.Cg >= 16 && g.Wo <= (g.sw == 2 ? 8 : 32) &&
         !(g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0);
}

// The weight between its own order (Co, Cg, kh, kw) and the NHWC im2col's K order (Co, kh, kw, Cg), in acc_t:
// per output channel, a (a x b) -> (b x a) transpose of its Cg x kh*kw block (taps_last: a = Cg, b = kh*kw;
// back, for grad_w: a = kh*kw, b = Cg). Not w.permute(...).contiguous(): ATen's generic strided copy runs
// at ~7 GB/s here, and late layers have big weights next to small activations -- 512x256x3x3 is 4.7 MB,
// ~620 us per call (1 thread), a quarter of the whole conv at N=8 (256@7->512, stride 2). Each block is
// L1-sized (9 KB for 256 channels x 3x3): reads strided within L1, writes contiguous, at about copy speed.
at::Tensor transpose_blocks(const at::Tensor& src_in, int64_t a, int64_t b, at::ScalarType acc_type) {
  const at::Tensor src = src_in.to(acc_type).contiguous();
  const int64_t rows = src.numel() / std::max<int64_t>(1, a * b);
  at::Tensor dst = at::empty({rows, b, a}, src.options());
  AT_DISPATCH_FLOATING_TYPES(acc_type, "pydl_conv2d_transpose_blocks", [&] {
    const scalar_t* sp = src.data_ptr<scalar_t>();
    scalar_t* dp = dst.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, a * b)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* __restrict__ s = sp + r * a * b;
        scalar_t* __restrict__ d = dp + r * a * b;
        int64_t i0 = 0;
#if defined(__AVX512F__)
        if (std::is_same<scalar_t, float>::value && b <= 64) {
          // 16 values of i at a time: d[j*a + i0..i0+15] gathers s[(i0..i0+15)*b + j] from L1
          const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                 _mm512_set1_epi32(int(b)));
          for (; i0 + 16 <= a; i0 += 16)
            for (int64_t j = 0; j < b; ++j)
              _mm512_storeu_ps(reinterpret_cast<float*>(d) + j * a + i0,
                               _mm512_i32gather_ps(idx, reinterpret_cast<const float*>(s) + i0 * b + j, 4));
        }
#endif
        for (int64_t j = 0; j < b; ++j)
          for (int64_t i = i0; i < a; ++i) d[j * a + i] = s[i * b + j];
      }
    });
  });
  return dst;
}

Geom make_geom(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
               at::IntArrayRef dilation, int64_t groups) {
  Geom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.Co = w.size(0); g.Cg = w.size(1); g.kh = w.size(2); g.kw = w.size(3);
  g.G = groups; g.Cog = g.Co / groups; g.K = g.Cg * g.kh * g.kw;
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1]; g.dh = dilation[0]; g.dw = dilation[1];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  g.L = g.Ho * g.Wo;
  // channels_last in -> channels_last out (the rule of pydl/ops/conv2d.py: out_memory_format)
  g.cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  // depthwise convs run direct loops in the input's own layout: no im2col to choose
  g.xcl = g.cl || (!(g.Cg == 1 && g.Cog == 1) && pick_im2col_nhwc(g));
  return g;
}

Act<double> make_act(const std::string& act, double leak, double sub, double maxv) {
  Act<double> a;
  if (act == "none") a.kind = kActNone;
  else if (act == "relu") a.kind = kActRelu;
  else if (act == "general_relu") a.kind = kActGeneralRelu;
  else PYDL_CHECK_VALUE(false, "conv2d: act must be none, relu or general_relu, got ", act);
  a.leak = leak; a.sub = sub; a.maxv = maxv;
  return a;
}

// =========================================================================================================
// Forward
// =========================================================================================================

std::tuple<at::Tensor, at::Tensor> conv2d_cpu(const at::Tensor& x_in, const at::Tensor& w,
                                              const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                              c10::string_view act_name, double leak, double sub, double maxv,
                                              bool save_preact) {
  check_conv2d_args(x_in, w, b, stride, padding, dilation, groups, c10::DeviceType::CPU, "conv2d");
  const Act<double> act = make_act(std::string(act_name), leak, sub, maxv);
  if (x_in.size(1) == 0) {  // torch's answer for an input without channels: an empty (N, 0, Ho, Wo) output
    const auto out = conv2d_out_shape(x_in, w, stride, padding, dilation);
    const auto fmt = (!x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast))
                         ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const at::Tensor y = at::empty(out, x_in.options().memory_format(fmt));
    return {y, save_preact && act.kind == kActGeneralRelu ? at::empty_like(y) : at::empty({0}, x_in.options())};
  }
  Geom g = make_geom(x_in, w, stride, padding, dilation, groups);
  const auto fmt = g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const bool dw = g.Cg == 1 && g.Cog == 1;
  const at::Tensor x = x_in.contiguous(g.xcl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options().memory_format(fmt));
  const bool keep_z = save_preact && act.kind == kActGeneralRelu;
  at::Tensor z = keep_z ? at::empty_like(y) : at::empty({0}, x.options());
  if (y.numel() == 0) return {y, z};
  if (winograd::use_forward(x_in, w, stride, padding, dilation, groups)) {  // 3x3 stride 1: conv2d/winograd.cpp
    winograd::forward(x_in, w, b.has_value() ? *b : at::Tensor(), g.ph, g.pw, act, g.cl, y, z);
    return {y, z};
  }
  // The weight in the accumulator type and in the K order of the layout (see the file comment): copied per
  // call, which is cheap next to the GEMM as long as the copy runs at memory speed (transpose_blocks).
  at::Tensor w_acc;
  if (dw) w_acc = (g.cl ? w.reshape({g.Co, g.kh * g.kw}).t() : w.reshape({g.Co, g.kh * g.kw})).to(acc_type).contiguous();
  else if (g.xcl) w_acc = transpose_blocks(w, g.Cg, g.kh * g.kw, acc_type);
  else w_acc = w.to(acc_type).contiguous();
  const at::Tensor b_acc = b.has_value() ? b->to(acc_type).contiguous() : at::zeros({g.Co}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Act<acc_t> a = cast_act<acc_t>(act);
    scalar_t* zp = keep_z ? z.data_ptr<scalar_t>() : nullptr;
    if (dw) {
      depthwise_forward<scalar_t>(g, x.data_ptr<scalar_t>(), w_acc, b_acc, a, y.data_ptr<scalar_t>(), zp);
    } else {
      gemm_forward<scalar_t>(g, x.data_ptr<scalar_t>(), w_acc, b_acc, a, y.data_ptr<scalar_t>(), zp);
    }
  });
  return {y, z};
}

// =========================================================================================================
// Backward
// =========================================================================================================

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& w, const c10::optional<at::Tensor>& z_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view act_name, double leak, double sub, double maxv, std::array<bool, 3> mask) {
  check_conv2d_args(x_in, w, c10::nullopt, stride, padding, dilation, groups, c10::DeviceType::CPU,
                    "conv2d_backward");
  const Act<double> act = make_act(std::string(act_name), leak, sub, maxv);
  check_conv2d_backward_args(grad_y, z_in, x_in, conv2d_out_shape(x_in, w, stride, padding, dilation),
                             act.kind != kActNone);
  if (x_in.size(1) == 0) {  // no input channel: the output was empty and constant, every gradient is zero
    const at::Tensor none = at::empty({0}, x_in.options());
    return {mask[0] ? at::zeros_like(x_in) : none, mask[1] ? at::zeros_like(w) : none,
            mask[2] ? at::zeros({w.size(0)}, x_in.options()) : none};
  }
  Geom g = make_geom(x_in, w, stride, padding, dilation, groups);
  const auto fmt = g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(g.xcl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor dy = grad_y.contiguous(fmt);
  const at::Tensor zs = act.kind == kActNone ? at::Tensor() : z_in->contiguous(fmt);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gx = mask[0] ? at::empty(x.sizes(), x.options().memory_format(fmt)) : at::empty({0}, x.options());
  at::Tensor gw = at::empty({0}, x.options()), gb = at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor gb_acc;
    const at::Tensor dz = make_dz<scalar_t>(g, dy, zs, act, mask[2] ? &gb_acc : nullptr);
    if (mask[2]) gb = gb_acc.to(x.scalar_type());
    if (g.Cg == 1 && g.Cog == 1) {  // depthwise: direct loops, both gradients in one pass
      at::Tensor gw_acc = at::zeros({g.Co, g.K}, x.options().dtype(acc_type));
      if (g.N * g.L > 0 && (mask[0] || mask[1])) {
        const at::Tensor w_acc = (g.cl ? w.reshape({g.Co, g.K}).t() : w.reshape({g.Co, g.K})).to(acc_type).contiguous();
        depthwise_backward<scalar_t>(g, x.data_ptr<scalar_t>(), w_acc, dz, mask[0] ? gx.data_ptr<scalar_t>() : nullptr,
                                     mask[1] ? &gw_acc : nullptr);
      }
      if (mask[1]) gw = gw_acc.view(w.sizes()).to(w.scalar_type());
      return;
    }
    if (mask[1] && winograd::use_backward_weight(x, w, stride, padding, dilation, groups)) {
      gw = at::empty(w.sizes(), w.options().memory_format(at::MemoryFormat::Contiguous));
      winograd::backward_weight(x, dz, g.ph, g.pw, gw);
    } else if (mask[1]) {
      at::Tensor gw_acc = at::empty({g.Co, g.K}, x.options().dtype(acc_type));
      if (g.N * g.L == 0) gw_acc.zero_();
      else backward_weight<scalar_t>(g, x.data_ptr<scalar_t>(), dz, gw_acc);
      gw = g.xcl ? transpose_blocks(gw_acc, g.kh * g.kw, g.Cg, acc_type).view(w.sizes()) : gw_acc.view(w.sizes());
      gw = gw.to(w.scalar_type()).contiguous();
    }
    if (mask[0] && gx.numel() > 0 && winograd::use_backward_input(x, w, stride, padding, dilation, groups)) {
      winograd::backward_input(dz, w, g.ph, g.pw, g.cl, gx);
    } else if (mask[0] && gx.numel() > 0) {
      const at::Tensor w_acc = g.xcl ? transpose_blocks(w, g.Cg, g.kh * g.kw, acc_type) : w.to(acc_type).contiguous();
      backward_input<scalar_t>(g, w_acc, dz, gx.data_ptr<scalar_t>());
    }
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace conv_cpu
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) {
  m.def("conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "str act, float leak, float sub, float maxv, bool save_preact) -> (Tensor, Tensor)");
  m.def("conv2d_backward(Tensor grad_y, Tensor x, Tensor w, Tensor? z, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, str act, float leak, float sub, float maxv, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pydl_cpu, CPU, m) {
  m.impl("conv2d", &pydl::conv_cpu::conv2d_cpu);
  m.impl("conv2d_backward", &pydl::conv_cpu::conv2d_backward_cpu);
}

