// Plain C++ interface between the ATen glue (act_stats.cpp) and the CUDA kernels (act_stats.cu).
// No torch headers on either side of this line: the .cu compiles with nvcc alone, in seconds.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"

namespace pydl {
namespace cuda {

// Group g's elements are x[o*so + g*sg + i*si] for o < outer, i < inner (element strides). The whole tensor is
// G = 1 with one span; per channel is (N, C, rest) with its strides, so channels_last needs no copy.
struct ActStatsArgs {
  const void* x;
  DType dtype;
  int64_t outer, groups, inner, so, sg, si;
  int32_t bins;
  double lo, hi, eps;
  void* fstats;         // (G, 4) float (double for double input): mean, M2, min, max
  int64_t* counts;      // (G, 7) int64, zeroed by the caller: numel, near_zero, nan, posinf, neginf, below, above
  int64_t* hist;        // (G, bins) int64, zeroed by the caller
  void* workspace;      // act_stats_workspace_bytes(...) bytes
  int64_t splits;       // blocks per group: act_stats_splits(...)
};

// Blocks per group: enough blocks in all to fill the GPU a few times over, never blocks with (almost) no work.
inline int64_t act_stats_splits(int64_t groups, int64_t per_group, int num_sms) {
  const int64_t target_blocks = int64_t(num_sms) * 4;
  const int64_t min_per_block = 256 * 8;  // threads x elements each
  int64_t s = groups > 0 ? (target_blocks + groups - 1) / groups : 1;
  const int64_t max_s = (per_group + min_per_block - 1) / min_per_block;
  if (s > max_s) s = max_s;
  return s < 1 ? 1 : s;
}

// Per-block partial results: count (int64) + mean, M2, min, max (accumulator type) for every (group, split).
inline int64_t act_stats_workspace_bytes(int64_t groups, int64_t splits, bool is_double) {
  return groups * splits * (int64_t(sizeof(int64_t)) + 4 * (is_double ? 8 : 4));
}

cudaError_t act_stats_launch(const ActStatsArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace pydl
