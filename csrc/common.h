// Shared helpers for pydl's C++ (ATen) glue: argument checks that name the argument, and dtype dispatch.
// Kept tiny on purpose: each op's file should read top to bottom without a framework in the way.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "act_stats_slots.h"

namespace pydl {

// TORCH_CHECK raises c10::Error, which Python sees as RuntimeError. For argument errors we prefer the
// Python exception a user expects: TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError.
#define PYDL_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, "pydl: ", __VA_ARGS__)
#define PYDL_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "pydl: ", __VA_ARGS__)

inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  const auto dt = t.scalar_type();
  PYDL_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op, ": ",
                  arg, " must be float16, bfloat16, float32 or float64, got ", dt);
}

inline void check_device(const at::Tensor& t, c10::DeviceType want, const char* op, const char* arg) {
  PYDL_CHECK_VALUE(t.device().type() == want, op, ": ", arg, " must be a ", c10::DeviceTypeName(want),
                   " tensor, got one on ", t.device());
}

// act_stats' histogram arguments, for a compiled op called directly (pydl/ops/act_stats.py checks them
// first, with the same words). The bin rule t = ((x - lo) * bins) / (hi - lo) runs in the accumulator type:
// lo and hi must be finite and distinct there, and (hi - lo) * bins must not overflow it, or values land in
// the wrong bin. Bounds are checked in double before the narrowing cast, which is undefined out of range.
inline void check_hist_args(int64_t bins, double lo, double hi, double eps, bool acc_double) {
  PYDL_CHECK_VALUE(bins >= 1 && bins <= (int64_t(1) << 24), "act_stats: bins must be an int in [1, 2**24], got ",
                   bins);
  PYDL_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi) && lo < hi, "act_stats: need finite lo < hi, got lo=",
                   lo, ", hi=", hi);
  PYDL_CHECK_VALUE(eps >= 0, "act_stats: eps must be a float >= 0, got ", eps);
  bool distinct, fits;
  if (acc_double) {
    distinct = true;
    fits = std::isfinite((hi - lo) * double(bins));
  } else {
    const double fmax = std::numeric_limits<float>::max();
    PYDL_CHECK_VALUE(std::abs(lo) <= fmax && std::abs(hi) <= fmax, "act_stats: lo=", lo, " and hi=", hi,
                     " must lie within float32's range (|value| <= ", fmax, "): the input is binned in float32");
    const float lo_f = float(lo), hi_f = float(hi);
    distinct = lo_f < hi_f;
    fits = std::isfinite((hi_f - lo_f) * float(bins));
  }
  PYDL_CHECK_VALUE(distinct, "act_stats: lo=", lo, " and hi=", hi, " are equal in float32, the dtype the input is "
                   "binned in; need lo < hi there");
  PYDL_CHECK_VALUE(fits, "act_stats: the range [lo, hi] = [", lo, ", ", hi, "] with bins=", bins,
                   " is too wide: (hi - lo) * bins must stay below the accumulator's maximum (the bin rule "
                   "computes ((x - lo) * bins) / (hi - lo) in it); narrow the range or use fewer bins");
}

}  // namespace pydl
