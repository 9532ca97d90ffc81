// Winograd F(4x4, 3x3) convolution for the CPU backend (csrc/cpu/conv2d/winograd.cpp), called from
// csrc/cpu/conv2d.cpp's forward and grad-input. See docs/ARCHITECTURE.md ("conv2d: the Winograd path").
#pragma once

#include <ATen/ATen.h>

#include "activation.h"

namespace pydl {
namespace winograd {

// Which algorithm a 3x3 stride-1 conv takes: set per thread by torch.ops.pydl_cpu.conv2d_set_algo, which the
// Python side calls before each CPU conv2d (pydl.conv2d_algo / algo= / Conv2d(algo=)).
enum Algo : int64_t { kAuto = 0, kDirect = 1, kWinograd = 2 };

// Shape and dtype the kernel handles: 3x3, stride 1, dilation 1, one group, fp32/fp64, padding <= limit.
bool supported(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
               at::IntArrayRef dilation, int64_t groups, int64_t max_padding);

// The forward of a supported conv should take Winograd: the thread's algo setting, and under "auto" the
// measured crossover table (winograd.cpp: wins()).
bool use_forward(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                 at::IntArrayRef dilation, int64_t groups);
// The same for grad-input (a forward conv of dz with the flipped, transposed filter, padding 2 - p).
bool use_backward_input(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups);

// The same for grad-weight (winograd.cpp: run_grad_weight).
bool use_backward_weight(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups);

// y = act(conv(x, w) + b), z = conv(x, w) + b when z is defined and non-empty. y (and z) are preallocated
// (N, K, Ho, Wo) in NCHW or channels_last (out_cl); b may be undefined. x, w, b: one dtype, fp32 or fp64.
void forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t ph, int64_t pw,
             const Act<double>& act, bool out_cl, at::Tensor& y, at::Tensor& z);

// grad_x (preallocated, x's shape, NCHW or channels_last per out_cl) from dz (the output gradient after the
// activation's backward, in x's dtype) and the forward's weight w.
void backward_input(const at::Tensor& dz, const at::Tensor& w, int64_t ph, int64_t pw, bool out_cl, at::Tensor& gx);

// gw (preallocated (K, C, 3, 3), contiguous, x's dtype) from x and dz (the output gradient after the
// activation's backward), each NCHW or channels_last.
void backward_weight(const at::Tensor& x, const at::Tensor& dz, int64_t ph, int64_t pw, at::Tensor& gw);

}  // namespace winograd
}  // namespace pydl
