// The fused epilogue activations, one definition for C++ and CUDA (see pydl/ops/_activation.py for the
// contract). act: 0 = none, 1 = relu, 2 = general_relu (leaky_relu(z, leak) - sub, clamped above at maxv).
#pragma once

#ifdef __CUDACC__
#define PYDL_HD __host__ __device__ __forceinline__
#else
#define PYDL_HD inline
#endif

namespace pydl {

enum ActKind : int { kActNone = 0, kActRelu = 1, kActGeneralRelu = 2 };

template <typename acc_t>
struct Act {
  int kind;
  acc_t leak, sub, maxv;  // maxv = +inf for no clamp

  PYDL_HD acc_t forward(acc_t z) const {
    if (kind == kActNone) return z;
    if (kind == kActRelu) return z > acc_t(0) ? z : acc_t(0);
    acc_t y = (z > acc_t(0) ? z : z * leak) - sub;
    return y < maxv ? y : maxv;
  }
  // dL/dz given dL/dy and the pre-activation z (torch's clamp passes the gradient at equality)
  PYDL_HD acc_t backward(acc_t dy, acc_t z) const {
    if (kind == kActNone) return dy;
    if (kind == kActRelu) return z > acc_t(0) ? dy : acc_t(0);
    const acc_t y = (z > acc_t(0) ? z : z * leak) - sub;
    if (!(y <= maxv)) return acc_t(0);
    return z > acc_t(0) ? dy : dy * leak;
  }
};

}  // namespace pydl
