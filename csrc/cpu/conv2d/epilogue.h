// conv2d's fused epilogue on the CPU: bias + activation applied to a GEMM tile while it is still in cache, and
// the activation's derivative for the backward. Inline templates: they sit in the innermost loops of
// gemm.cpp, depthwise.cpp and epilogue.cpp, and must vectorise there.
#pragma once

#include "conv2d_internal.h"

namespace pydl {
namespace conv_cpu {

// ---- the epilogue: bias + activation, written in the output's layout ------------------------------------
// Templated on the activation so each instance is a branch-free loop the compiler vectorises.
// NaN semantics as torch's (see csrc/activation.h): the selects fall through to z / dy when a comparison
// with NaN fails, except at the clamp, which stops the gradient at a NaN when there is one (maxv finite).
template <int KIND, typename acc_t>
inline acc_t act_fwd(acc_t z, acc_t leak, acc_t sub, acc_t maxv) {
  if (KIND == kActNone) return z;
  if (KIND == kActRelu) return z < acc_t(0) ? acc_t(0) : z;
  const acc_t y = (z < acc_t(0) ? z * leak : z) - sub;
  return y > maxv ? maxv : y;
}

template <int KIND, typename acc_t>
inline acc_t act_bwd(acc_t dy, acc_t z, acc_t leak, acc_t sub, acc_t maxv) {
  if (KIND == kActNone) return dy;
  if (KIND == kActRelu) return z <= acc_t(0) ? acc_t(0) : dy;
  const acc_t y = (z < acc_t(0) ? z * leak : z) - sub;
  const acc_t d = z > acc_t(0) ? dy : dy * leak;
  const bool stop = (y > maxv) | ((y != y) & (maxv - maxv == acc_t(0)));
  return stop ? acc_t(0) : d;
}

// One contiguous run: out[i] = act(in[i] + bias), z[i] = in[i] + bias (if z).
template <int KIND, typename scalar_t, typename acc_t>
inline void epilogue_run(const acc_t* __restrict__ in, int64_t len, acc_t bias, const Act<acc_t>& a,
                         scalar_t* __restrict__ y, scalar_t* __restrict__ z) {
  const acc_t leak = a.leak, sub = a.sub, maxv = a.maxv;
  if (z != nullptr) {
    for (int64_t i = 0; i < len; ++i) {
      const acc_t v = in[i] + bias;
      z[i] = scalar_t(v);
      y[i] = scalar_t(act_fwd<KIND>(v, leak, sub, maxv));
    }
  } else {
    for (int64_t i = 0; i < len; ++i) y[i] = scalar_t(act_fwd<KIND>(in[i] + bias, leak, sub, maxv));
  }
}

// Row-of-channels variant (NHWC): out[c] = act(in[c] + bias[c])
template <int KIND, typename scalar_t, typename acc_t>
inline void epilogue_row(const acc_t* __restrict__ in, int64_t len, const acc_t* __restrict__ bias,
                         const Act<acc_t>& a, scalar_t* __restrict__ y, scalar_t* __restrict__ z) {
  const acc_t leak = a.leak, sub = a.sub, maxv = a.maxv;
  for (int64_t c = 0; c < len; ++c) {
    const acc_t v = in[c] + bias[c];
    if (z != nullptr) z[c] = scalar_t(v);
    y[c] = scalar_t(act_fwd<KIND>(v, leak, sub, maxv));
  }
}

// epilogue_run in place: y holds the GEMM's output on entry (acc_t output written by the GEMM itself).
template <int KIND, typename acc_t>
inline void epilogue_run_inplace(acc_t* __restrict__ y, int64_t len, acc_t bias, const Act<acc_t>& a,
                                 acc_t* __restrict__ z) {
  const acc_t leak = a.leak, sub = a.sub, maxv = a.maxv;
  if (z != nullptr) {
    for (int64_t i = 0; i < len; ++i) {
      const acc_t v = y[i] + bias;
      z[i] = v;
      y[i] = act_fwd<KIND>(v, leak, sub, maxv);
    }
  } else {
    for (int64_t i = 0; i < len; ++i) y[i] = act_fwd<KIND>(y[i] + bias, leak, sub, maxv);
  }
}

// epilogue_row in place: y holds the GEMM's output on entry (whole-batch scheme, channels_last, acc_t output).
template <int KIND, typename acc_t>
inline void epilogue_row_inplace(acc_t* __restrict__ y, int64_t len, const acc_t* __restrict__ bias,
                                 const Act<acc_t>& a, acc_t* __restrict__ z) {
  const acc_t leak = a.leak, sub = a.sub, maxv = a.maxv;
  for (int64_t c = 0; c < len; ++c) {
    const acc_t v = y[c] + bias[c];
    if (z != nullptr) z[c] = v;
    y[c] = act_fwd<KIND>(v, leak, sub, maxv);
  }
}

}  // namespace conv_cpu
}  // namespace pydl
