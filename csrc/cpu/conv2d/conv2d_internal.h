// What the parts of the CPU conv2d (csrc/cpu/conv2d.cpp and csrc/cpu/conv2d/*.cpp) share: the problem's
// geometry, the small helpers every path uses, and the kernels each part defines. csrc/cpu/conv2d.cpp's top
// comment describes the algorithm; each part's own comment, its piece of it.
//
// The kernels are templates over the storage type, defined in their part and instantiated there for the four
// dtypes the dispatch calls them with (PYDL_CONV_DTYPES): a part then compiles alone, and only its own edits
// recompile it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "activation.h"

namespace pydl {
namespace conv_cpu {

// X(scalar_t) for every dtype conv2d runs in (those of AT_DISPATCH_FLOATING_TYPES_AND2(kHalf, kBFloat16)).
#define PYDL_CONV_DTYPES(X) X(float) X(double) X(at::Half) X(at::BFloat16)

struct Geom {
  int64_t N, C, H, W;       // input
  int64_t Co, Cg, Cog, G;   // out channels, in/out channels per group, groups
  int64_t kh, kw, K;        // kernel, K = Cg*kh*kw
  int64_t Ho, Wo, L;        // output, L = Ho*Wo
  int64_t sh, sw, ph, pw, dh, dw;
  bool cl;                  // channels_last output and gradients (x came in channels_last)
  bool xcl;                 // im2col from a channels_last copy of x (always when cl; see pick_im2col)
};

// First and one-past-last output column wo in [0, Wo) whose tap j lands inside the input row:
// 0 <= wo*sw - pw + j*dw < W. Everything outside is padding. Computed once per row instead of a branch per
// element, so the copy loop between them has no condition and vectorises.
inline void valid_cols(const Geom& g, int64_t j, int64_t& lo, int64_t& hi) {
  const int64_t off = j * g.dw - g.pw;  // wi = wo*sw + off
  lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
  hi = (g.W - 1 - off) < 0 ? 0 : (g.W - 1 - off) / g.sw + 1;
  lo = std::min(lo, g.Wo);
  hi = std::min(std::max(hi, lo), g.Wo);
}

template <typename F>
void with_act(int kind, F&& f) {
  switch (kind) {
    case kActRelu: f(std::integral_constant<int, kActRelu>()); break;
    case kActGeneralRelu: f(std::integral_constant<int, kActGeneralRelu>()); break;
    default: f(std::integral_constant<int, kActNone>()); break;
  }
}

// A (rows x cols) matrix view of a raw buffer with leading dimension ld (no copy), for at::mm.
template <typename acc_t>
at::Tensor mat(const acc_t* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<acc_t*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// Run fn(task) for task in [0, T): in parallel when there are enough tasks, else in turn (each GEMM then
// parallelises itself).
template <typename F>
void for_tasks(int64_t T, F&& fn) {
  if (T >= at::get_num_threads() && T > 1) {
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) fn(t);
    });
  } else {
    for (int64_t t = 0; t < T; ++t) fn(t);
  }
}

template <typename acc_t>
Act<acc_t> cast_act(const Act<double>& a) {
  return Act<acc_t>{a.kind, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
}

// ---- gemm.cpp ------------------------------------------------------------------------------------------
// Output pixels per im2col tile (see its comment).
int64_t pick_tile(const Geom& g, int64_t acc_bytes, int64_t tasks_outside, int64_t pixels);

template <typename scalar_t>
void gemm_forward(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const at::Tensor& b_acc,
                  const Act<at::opmath_type<scalar_t>>& act, scalar_t* y, scalar_t* z);
template <typename scalar_t>
void backward_weight(const Geom& g, const scalar_t* x, const at::Tensor& dz, at::Tensor& gw_acc);
template <typename scalar_t>
void backward_input(const Geom& g, const at::Tensor& w_acc, const at::Tensor& dz, scalar_t* dx);

// ---- im2col.cpp ----------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void im2col_nchw(const Geom& g, const scalar_t* __restrict__ x, int64_t p0, int64_t tl, acc_t* __restrict__ buf);
template <typename acc_t>
void col2im_nchw(const Geom& g, const acc_t* __restrict__ buf, int64_t p0, int64_t tl, acc_t* __restrict__ dx);
template <typename scalar_t, typename acc_t>
void im2col_nhwc(const Geom& g, const scalar_t* __restrict__ x, int64_t p0, int64_t tl, acc_t* __restrict__ buf);
template <typename acc_t>
void col2im_nhwc(const Geom& g, const acc_t* __restrict__ buf, int64_t p0, int64_t tl, acc_t* __restrict__ dx);

// ---- epilogue.cpp (the forward's epilogue is inline, in epilogue.h) ----------------------------------------
template <typename scalar_t>
at::Tensor make_dz(const Geom& g, const at::Tensor& dy, const at::Tensor& zs, const Act<double>& act_d,
                   at::Tensor* grad_b);

// ---- depthwise.cpp -------------------------------------------------------------------------------------
template <typename scalar_t>
void depthwise_forward(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const at::Tensor& b_acc,
                       const Act<at::opmath_type<scalar_t>>& act, scalar_t* y, scalar_t* z);
template <typename scalar_t>
void depthwise_backward(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const at::Tensor& dz,
                        scalar_t* dx, at::Tensor* gw_acc);

}  // namespace conv_cpu
}  // namespace pydl
