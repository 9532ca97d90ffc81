// Plain C++ interface between the ATen glue (conv2d.cpp) and the CUDA kernels (conv2d.cu). No torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"

namespace pydl {
namespace cuda {

// Everything a conv2d kernel needs: sizes, element strides, pointers, the epilogue. One struct for the forward
// and the backward launchers (each reads the fields it needs). Tensors are addressed through their strides,
// so NCHW, channels_last and sliced inputs need no copy.
struct ConvArgs {
  DType dtype;
  int64_t N, C, H, W;          // input
  int64_t Co, Cg, Cog, G;      // out channels, in/out channels per group, groups
  int64_t KH, KW;              // kernel
  int64_t Ho, Wo;              // output
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t sx[4];               // strides of x (n, c, h, w)
  int64_t sy[4];               // strides of y / z (forward), of grad_y and z (backward)
  int64_t sdx[4];              // strides of grad_x (backward)
  // forward
  const void* x;
  const void* w;               // (Co, Cg, KH, KW) contiguous
  const void* b;               // (Co,) or nullptr
  void* y;
  void* z;                     // pre-activation (if save_z)
  // backward
  const void* dy;
  const void* zs;              // pre-activation, or y standing in for it (relu); unused for act none
  void* dx;
  void* ws;                    // grad_w partials: (split, Co, Cg*KH*KW) in the accumulator type
  void* gb;                    // grad_b (Co,) in the input dtype
  int64_t split, per_split;    // grad_w: the pixels split into `split` ranges of `per_split`
  // epilogue: act 0 none, 1 relu, 2 general_relu (csrc/activation.h)
  int act;
  double leak, sub, maxv;
  bool save_z;
  bool ci_inner;               // x is channels_last: order taps (i, j, c) so a K-slice is contiguous
  bool allow_tf32;             // fp32 on TF32 tensor cores (off by default: exact fp32 FMA)
};

cudaError_t conv2d_forward_launch(const ConvArgs& a, cudaStream_t stream);
cudaError_t conv2d_dgrad_launch(const ConvArgs& a, cudaStream_t stream);   // grad_x
cudaError_t conv2d_wgrad_launch(const ConvArgs& a, cudaStream_t stream);   // grad_w partials into ws
cudaError_t conv2d_bgrad_launch(const ConvArgs& a, cudaStream_t stream);   // grad_b

// How many pixel ranges grad_w is split over: enough blocks to fill the GPU a few times, never ranges so
// short that the split-sum dominates.
inline int64_t conv2d_wgrad_split(int64_t Cog, int64_t K, int64_t G, int64_t pixels, int num_sms) {
  const int64_t tiles = ((Cog + 63) / 64) * ((K + 63) / 64) * G;
  int64_t s = (4 * int64_t(num_sms) + tiles - 1) / tiles;
  const int64_t max_s = (pixels + 255) / 256;
  if (s > max_s) s = max_s;
  if (s > 64) s = 64;
  if (s > 65535 / (G > 0 ? G : 1)) s = 65535 / (G > 0 ? G : 1);
  return s < 1 ? 1 : s;
}

inline int64_t conv2d_wgrad_split_for(const ConvArgs& a, int num_sms) {
  if (a.Cg == 1 && a.Cog == 1) return 1;  // depthwise: the direct kernel reduces over all pixels itself
  return conv2d_wgrad_split(a.Cog, a.Cg * a.KH * a.KW, a.G, a.N * a.Ho * a.Wo, num_sms);
}

}  // namespace cuda
}  // namespace pydl
