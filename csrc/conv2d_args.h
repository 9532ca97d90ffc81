// conv2d's argument checks, shared by the CPU kernels (csrc/cpu/conv2d.cpp) and the CUDA glue
// (csrc/cuda/conv2d.cpp). Both compiled ops are callable directly (torch.ops.pydl_cpu.conv2d_backward...),
// bypassing every Python check, and the kernels index x, w, grad_y and z with sizes derived from x and w --
// so each tensor a kernel reads is checked here against those sizes first. A mismatch is a ValueError or
// TypeError that names the argument, never an out-of-bounds read. The same rules as pydl/ops/conv2d.py.
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "activation.h"
#include "common.h"

namespace pydl {

// x, weight and bias against each other; `dev` is the device type the kernel runs on.
inline void check_conv2d_args(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              int64_t groups, c10::DeviceType dev, const char* op) {
  check_device(x, dev, op, "x");
  check_floating(x, op, "x");
  PYDL_CHECK_VALUE(w.device() == x.device(), op, ": weight is on ", w.device(), " but x is on ", x.device());
  PYDL_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": weight dtype ", w.scalar_type(),
                  " does not match x dtype ", x.scalar_type());
  PYDL_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got rank ", x.dim());
  PYDL_CHECK_VALUE(w.dim() == 4, op, ": weight must be 4-D (Cout, Cin/groups, kh, kw), got rank ", w.dim());
  PYDL_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
                   ": stride, padding, dilation need 2 entries each");
  PYDL_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  PYDL_CHECK_VALUE(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
  PYDL_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  PYDL_CHECK_VALUE(groups >= 1, op, ": groups must be a positive int, got ", groups);
  PYDL_CHECK_VALUE(x.size(1) % groups == 0 && w.size(0) % groups == 0, op, ": in_channels (", x.size(1),
                   ") and out_channels (", w.size(0), ") must be divisible by groups (", groups, ")");
  PYDL_CHECK_VALUE(w.size(1) * groups == x.size(1), op, ": weight expects ", w.size(1) * groups,
                   " input channels but x has ", x.size(1));
  PYDL_CHECK_VALUE(w.size(0) > 0 && w.size(2) > 0 && w.size(3) > 0, op,
                   ": weight must have nonzero out_channels and kernel sizes, got shape ", w.sizes());
  if (b.has_value()) {
    PYDL_CHECK_VALUE(b->device() == x.device(), op, ": bias is on ", b->device(), " but x is on ", x.device());
    PYDL_CHECK_TYPE(b->scalar_type() == x.scalar_type(), op, ": bias dtype ", b->scalar_type(),
                    " does not match x dtype ", x.scalar_type());
    PYDL_CHECK_VALUE(b->dim() == 1 && b->size(0) == w.size(0), op, ": bias must have shape (", w.size(0), ")");
  }
  // compared before dividing: C++ division truncates toward zero, so a negative numerator would give Ho = 1
  PYDL_CHECK_VALUE(x.size(2) + 2 * padding[0] >= dilation[0] * (w.size(2) - 1) + 1 &&
                       x.size(3) + 2 * padding[1] >= dilation[1] * (w.size(3) - 1) + 1,
                   op, ": kernel (", w.size(2), ", ", w.size(3), ") is larger than the padded input");
}

// The output's shape (N, Cout, Ho, Wo) -- with 0 channels for an input with 0 channels, as
// torch.nn.functional.conv2d returns (nothing is computed then; see pydl/ops/conv2d.py: out_channels).
inline std::array<int64_t, 4> conv2d_out_shape(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const int64_t ho = (x.size(2) + 2 * padding[0] - dilation[0] * (w.size(2) - 1) - 1) / stride[0] + 1;
  const int64_t wo = (x.size(3) + 2 * padding[1] - dilation[1] * (w.size(3) - 1) - 1) / stride[1] + 1;
  return {x.size(0), x.size(1) > 0 ? w.size(0) : 0, ho, wo};
}

// The backward's extra inputs: grad_y, and z (read only when there is an activation) must have the
// output's shape, x's dtype and x's device. Call after check_conv2d_args.
inline void check_conv2d_backward_args(const at::Tensor& grad_y, const c10::optional<at::Tensor>& z,
                                       const at::Tensor& x, const std::array<int64_t, 4>& out, bool has_act) {
  const char* op = "conv2d_backward";
  PYDL_CHECK_VALUE(grad_y.device() == x.device(), op, ": grad_y is on ", grad_y.device(), " but x is on ",
                   x.device());
  PYDL_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y dtype ", grad_y.scalar_type(),
                  " does not match x dtype ", x.scalar_type());
  PYDL_CHECK_VALUE(grad_y.sizes() == at::IntArrayRef(out), op, ": grad_y must have shape ", at::IntArrayRef(out),
                   " (the output's: N, out_channels, Ho, Wo), got ", grad_y.sizes());
  if (!has_act) return;  // z is not read
  PYDL_CHECK_VALUE(z.has_value(), op, ": an activation needs z (the pre-activation, or y for relu) of shape ",
                   at::IntArrayRef(out), ", got None");
  PYDL_CHECK_VALUE(z->sizes() == at::IntArrayRef(out), op, ": z must have shape ", at::IntArrayRef(out),
                   " (the output's), got ", z->sizes());
  PYDL_CHECK_VALUE(z->device() == x.device(), op, ": z is on ", z->device(), " but x is on ", x.device());
  PYDL_CHECK_TYPE(z->scalar_type() == x.scalar_type(), op, ": z dtype ", z->scalar_type(), " does not match x dtype ",
                  x.scalar_type());
}

}  // namespace pydl
