// Shared helpers for pydl's C++ (ATen) glue: argument checks that name the argument, and dtype dispatch.
// Kept tiny on purpose: each op's file should read top to bottom without a framework in the way.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

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

// Slots of one group's counter row, after the `bins` histogram bins. The same order in every backend, and
// the order of columns 2..6 of the `counts` output: [numel, near_zero, nan, posinf, neginf, below, above].
enum ActStatsExtra : int { kNaN = 0, kPosInf = 1, kNegInf = 2, kBelow = 3, kAbove = 4, kNumExtra = 5 };
constexpr int kCountCols = 7;

}  // namespace pydl
