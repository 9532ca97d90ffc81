// (count, mean, M2) on a GPU: a thread's shifted sums turned into moments, the moments shuffled down a warp
// and merged (csrc/moments.h's formula), and a warp's plain sum. act_stats and batch_norm reduce through
// these; a block's merge across warps stays in each kernel file, because it declares __shared__ scratch
// (which the emulated build rewrites in a .cu only).
#pragma once

#include "moments.h"

namespace pydl {
namespace cuda {

template <typename acc_t>
struct Moments {
  long long n;
  acc_t mean, m2;
};

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> merge(Moments<acc_t> a, const Moments<acc_t>& b) {
  chan_merge(a.n, a.mean, a.m2, b.n, b.mean, b.m2);
  return a;
}

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> shfl_down(const Moments<acc_t>& m, int d) {
  Moments<acc_t> o;
  o.n = __shfl_down_sync(0xffffffffu, m.n, d);
  o.mean = __shfl_down_sync(0xffffffffu, m.mean, d);
  o.m2 = __shfl_down_sync(0xffffffffu, m.m2, d);
  return o;
}

// One thread's shifted sums (of v - K and (v - K)^2 over n values) -> (n, mean, M2). Shifting by a value K
// near the mean keeps the sum of squares accurate when |mean| >> std, at two FMAs a value instead of
// Welford's division; the max(., 0) absorbs the last rounding of a near-constant set.
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> from_shifted(long long n, acc_t K, acc_t s1, acc_t s2) {
  Moments<acc_t> m;
  m.n = n;
  m.mean = n ? K + s1 / acc_t(n) : acc_t(0);
  m.m2 = n ? fmax(s2 - s1 * (s1 / acc_t(n)), acc_t(0)) : acc_t(0);
  return m;
}

// The merge of a full warp's values of M (Moments or a type with merge/shfl_down overloads), valid in lane 0.
template <typename M>
__device__ __forceinline__ M warp_merge(M m) {
  for (int d = 16; d > 0; d >>= 1) m = merge(m, shfl_down(m, d));
  return m;
}

// A full warp's sum, in every lane (a butterfly: each step adds the lane `d` away).
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum_all(acc_t v) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

}  // namespace cuda
}  // namespace pydl
