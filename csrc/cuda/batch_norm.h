// Plain C++ interface between the ATen glue (batch_norm.cpp) and the CUDA kernels (batch_norm.cu).
// No torch headers on either side of this line: the .cu compiles with nvcc alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"

namespace pydl {
namespace cuda {

// One struct for every batch_norm launcher; each reads the fields it needs (documented per launcher).
// x is dense, viewed as (N, C, L): contiguous NCL (plane (n, c) = L contiguous values), or channels last
// (cl: N*L rows of C contiguous channels).
struct BnArgs {
  int64_t N = 0, C = 0, L = 1;
  bool cl = false;
  DType dtype = DType::kFloat;        // x, dy, out
  DType param_dtype = DType::kFloat;  // weight, bias, running stats: x's dtype, or float for half/bf16 x
  const void* x = nullptr;
  const void* dy = nullptr;
  void* out = nullptr;                    // y (apply) or dx (elemt)
  const void* weight = nullptr;           // nullable: 1
  const void* bias = nullptr;             // nullable: 0
  const void* running_mean = nullptr;     // eval stats
  const void* running_var = nullptr;
  // per-channel (C,) tensors in the accumulation dtype (double for double x, else float)
  void* mean = nullptr;
  void* invstd = nullptr;
  void* var = nullptr;                    // biased var (forward stats) or M2 (plain stats)
  void* sum_dz = nullptr;
  void* sum_dz_xmu = nullptr;
  void* dweight = nullptr;
  int act = 0;                            // csrc/activation.h's ActKind
  double leak = 0, sub = 0, maxv = 0, eps = 0;
  bool use_batch_stats = true;            // elemt: false = eval (statistics were constants)
  int64_t count = 0;                      // elemt: values per channel that the sums were taken over
  void* workspace = nullptr;              // bn_workspace_bytes(...) bytes
  int64_t splits = 1;                     // bn_splits(...)
};

inline bool bn_is_double(const BnArgs& a) { return a.dtype == DType::kDouble; }

// How many programs share one channel's reduction: enough blocks to fill the GPU a few times over, but never
// so many that a block has (almost) nothing to do.
inline int64_t bn_splits(const BnArgs& a, int num_sms) {
  const int64_t target = int64_t(num_sms) * 4;
  const int64_t channel_blocks = a.cl ? (a.C + 31) / 32 : a.C;
  const int64_t extent = a.cl ? (a.N * a.L + 63) / 64 : a.N;  // NLC: >= 64 rows a block; NCL: whole planes
  int64_t s = channel_blocks > 0 ? (target + channel_blocks - 1) / channel_blocks : 1;
  if (s > extent) s = extent;
  if (s > 65535) s = 65535;  // gridDim.y
  if (s < 1) s = 1;
  // the launchers give split k the range [k * per, (k + 1) * per): with per = ceil(extent / s), a split
  // past the end would be empty -- recount so none is
  const int64_t full = a.cl ? a.N * a.L : a.N;
  if (full > 0) {
    const int64_t per = (full + s - 1) / s;
    s = (full + per - 1) / per;
  }
  return s;
}

// Partials (count int64 + two accumulators per (split, channel)) + 6 per-channel constants + (mean, M2) per
// (n, c) plane for the single-pass forward.
inline int64_t bn_workspace_bytes(const BnArgs& a) {
  const int64_t acc = bn_is_double(a) ? 8 : 4;
  return a.splits * a.C * (8 + 2 * acc) + 6 * a.C * acc + 2 * a.N * a.C * acc + 16;
}

// Batch statistics. forward: mean, var (biased), invstd = 1/sqrt(var + eps); else mean and M2 (in `var`).
// Needs N*L > 0.
cudaError_t bn_stats_launch(const BnArgs& a, bool forward, cudaStream_t stream);
// The whole training forward in ONE read of x (NCL only): a cooperative grid of one block per SM keeps its
// slice of x in shared memory across a grid-wide barrier (statistics need every block's share before anyone
// can normalise). Writes out, mean, var, invstd. Returns cudaErrorNotSupported (or the cooperative launch's
// own error) when x does not fit in the GPU's shared memory or the device cannot launch cooperatively: the
// caller then clears the error and runs bn_stats_launch + bn_apply_launch.
cudaError_t bn_forward_onepass_launch(const BnArgs& a, cudaStream_t stream);
// The training backward (use_batch_stats, NCL) in one read of (dy, x): writes out = dx, sum_dz, sum_dz_xmu,
// dweight. The same refusals and fallback (bn_reduce_launch + bn_elemt_launch) as the forward.
cudaError_t bn_backward_onepass_launch(const BnArgs& a, cudaStream_t stream);
// Eval statistics: mean = running_mean, var = running_var, invstd = 1/sqrt(var + eps) (acc dtype copies).
cudaError_t bn_eval_stats_launch(const BnArgs& a, cudaStream_t stream);
// out = act((x - mean) * invstd * weight + bias).
cudaError_t bn_apply_launch(const BnArgs& a, cudaStream_t stream);
// sum_dz, sum_dz_xmu and dweight = sum_dz_xmu * invstd (dz = act'(z) * dy). Needs N*L > 0.
cudaError_t bn_reduce_launch(const BnArgs& a, cudaStream_t stream);
// out = dx from the sums (use_batch_stats) or without them (eval).
cudaError_t bn_elemt_launch(const BnArgs& a, cudaStream_t stream);
// running = (1 - f) * running + f * batch, f = momentum (nbt == nullptr) or 1 / *nbt; var times `bessel`.
cudaError_t bn_update_running_launch(void* running_mean, void* running_var, DType running_dtype,
                                     const void* mean, const void* var, bool acc_double, const int64_t* nbt,
                                     double momentum, double bessel, int64_t C, cudaStream_t stream);

}  // namespace cuda
}  // namespace pydl
