// The fused epilogue activations, one definition for C++ and CUDA (see pydl/ops/_activation.py for the
// contract). act: 0 = none, 1 = relu, 2 = general_relu (leaky_relu(z, leak) - sub, clamped above at maxv).
#pragma once

#include "host_device.h"

namespace pydl {

enum ActKind : int { kActNone = 0, kActRelu = 1, kActGeneralRelu = 2 };

template <typename acc_t>
struct Act {
  int kind;
  acc_t leak, sub, maxv;  // maxv = +inf for no clamp

  // NaN in, NaN out, as torch.relu / leaky_relu / clamp: every comparison with a NaN is false, so each
  // select is written to fall through to z when its test fails (z > 0 ? z : 0 would turn NaN into 0 and
  // silently hide a diverging run).
  PYDL_HD acc_t forward(acc_t z) const {
    if (kind == kActNone) return z;
    if (kind == kActRelu) return z < acc_t(0) ? acc_t(0) : z;
    acc_t y = (z < acc_t(0) ? z * leak : z) - sub;
    return y > maxv ? maxv : y;
  }
  // dL/dz given dL/dy and the pre-activation z (for relu: z or y). As torch's backward formulas: relu's
  // (threshold_backward) stops the gradient only where z <= 0, so a NaN z passes it; the clamp passes it at
  // equality and stops it at a NaN (NaN <= maxv is false) -- when there is a clamp (maxv finite:
  // inf - inf is NaN); leaky_relu's slope is 1 only where z > 0.
  PYDL_HD acc_t backward(acc_t dy, acc_t z) const {
    if (kind == kActNone) return dy;
    if (kind == kActRelu) return z <= acc_t(0) ? acc_t(0) : dy;
    const acc_t y = (z < acc_t(0) ? z * leak : z) - sub;
    const bool clamps = maxv - maxv == acc_t(0);
    if ((y > maxv) | ((y != y) & clamps)) return acc_t(0);
    return z > acc_t(0) ? dy : dy * leak;
  }
};

}  // namespace pydl
