// act_stats on the GPU: one read of the tensor gives count, mean, M2, min, max, near-zero/NaN/Inf counts and
// a fixed-bin histogram, for the whole tensor or per channel. No torch headers: see act_stats.h.
//
// Two kernels:
//   partial  -- grid = groups x splits blocks. Each thread reads a strided share of its group's elements and
//               keeps shifted sums (see below), min, max and a near-zero count in registers; every value's
//               histogram slot goes to a per-block histogram in shared memory ("privatised": the block's
//               threads contend only with each other). The block then merges its threads' moments with
//               Chan's formula (warp shuffles, then one warp over the per-warp results), writes them to a
//               workspace, and adds its shared histogram to the global int64 one with one atomic per bin.
//   finalize -- one thread per group merges that group's block partials in order (deterministic).
//
// Warp-aggregated atomics: after a ReLU half the values are 0 and land in one bin. 32 lanes incrementing the
// same shared counter serialise. __match_any_sync groups the lanes that hold the same slot; the lowest lane
// of each group adds the group's size. A warp of zeros is one atomic, not 32.
//
// Shifted sums: a thread sums (v - K) and (v - K)^2 with K its first finite value. Summing squares directly
// loses everything to cancellation when |mean| >> std; shifting by a value near the mean keeps it accurate,
// and costs two FMAs per element instead of Welford's division.
//
// The counts are integers added atomically: exact and deterministic. The float statistics are deterministic
// for a given grid (fixed merge order).
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cmath>

#include "acc.h"
#include "act_stats.h"
#include "act_stats_slots.h"
#include "warp_moments.h"

namespace pydl {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSharedSlots = 8 * 1024;  // 32 KB of int32 (static + dynamic shared must stay under the
                                           // 48 KB a block gets without opt-in); beyond it, count in global memory

template <typename acc_t> __device__ __forceinline__ acc_t inf_of();
template <> __device__ __forceinline__ float inf_of<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double inf_of<double>() { return __longlong_as_double(0x7ff0000000000000LL); }

// The moments of a group and its range: merged and shuffled as Moments, plus min and max.
template <typename acc_t>
struct Stats : Moments<acc_t> {
  acc_t mn, mx;
};

template <typename acc_t>
__device__ __forceinline__ Stats<acc_t> merge(const Stats<acc_t>& a, const Stats<acc_t>& b) {
  Stats<acc_t> r;
  using M = Moments<acc_t>;
  static_cast<M&>(r) = merge(static_cast<const M&>(a), static_cast<const M&>(b));
  r.mn = fmin(a.mn, b.mn);
  r.mx = fmax(a.mx, b.mx);
  return r;
}

template <typename acc_t>
__device__ __forceinline__ Stats<acc_t> shfl_down(const Stats<acc_t>& m, int d) {
  Stats<acc_t> o;
  static_cast<Moments<acc_t>&>(o) = shfl_down(static_cast<const Moments<acc_t>&>(m), d);
  o.mn = __shfl_down_sync(0xffffffffu, m.mn, d);
  o.mx = __shfl_down_sync(0xffffffffu, m.mx, d);
  return o;
}

// The bin rule shared by every pydl backend (torch.histc's): t = ((v - lo) * bins) / (hi - lo) in acc_t.
// IEEE division here (nvcc's default -prec-div=true; pydl never builds with --use_fast_math).
template <typename acc_t>
__device__ __forceinline__ int slot_of(acc_t v, acc_t lo, acc_t hi, acc_t width, acc_t nb, int bins) {
  const acc_t inf = inf_of<acc_t>();
  if (v != v) return bins + kNaN;
  if (v == inf) return bins + kPosInf;
  if (v == -inf) return bins + kNegInf;
  if (v < lo) return bins + kBelow;
  if (v > hi) return bins + kAbove;
  const int s = int(((v - lo) * nb) / width);
  return s < bins ? s : bins - 1;
}

// The global counter of group g's slot s: a histogram bin, or past the bins its column of counts. int64
// counters, added to as unsigned long long (the atomicAdd there is; the counts never reach 2^63).
__device__ __forceinline__ unsigned long long* counter(const ActStatsArgs& a, int64_t g, int bins, int s) {
  int64_t* p = s < bins ? a.hist + g * bins + s : a.counts + g * kCountCols + kColNaN + (s - bins);
  return reinterpret_cast<unsigned long long*>(p);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) act_stats_partial(ActStatsArgs a) {
  using acc_t = typename Acc<T>::type;
  extern __shared__ int sh_hist[];
  __shared__ Stats<acc_t> sh_mom[kWarps];
  __shared__ unsigned long long sh_nz;

  const int bins = a.bins;
  const int nslots = bins + kNumExtra;
  const bool shared_hist = nslots <= kMaxSharedSlots;
  const int64_t g = blockIdx.x / a.splits;
  const int64_t split = blockIdx.x % a.splits;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  if (shared_hist)
    for (int s = threadIdx.x; s < nslots; s += kThreads) sh_hist[s] = 0;
  if (threadIdx.x == 0) sh_nz = 0;
  __syncthreads();

  const acc_t lo = acc_t(a.lo), hi = acc_t(a.hi), width = hi - lo, nb = acc_t(bins), eps = acc_t(a.eps);
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const int64_t per_group = a.outer * a.inner;
  const int64_t per_split = (per_group + a.splits - 1) / a.splits;
  const int64_t e_begin = split * per_split;
  const int64_t e_end = e_begin + per_split < per_group ? e_begin + per_split : per_group;

  long long n = 0;
  acc_t K = 0, s1 = 0, s2 = 0, mn = inf_of<acc_t>(), mx = -inf_of<acc_t>();
  unsigned nz = 0;
  // Every thread of the block runs the same number of iterations (so warps stay converged for
  // __match_any_sync); threads past the end carry slot -1 and skip the atomic.
  for (int64_t base = e_begin; base < e_end; base += kThreads) {
    const int64_t e = base + threadIdx.x;
    int slot = -1;
    if (e < e_end) {
      int64_t off;
      if (a.outer == 1) {
        off = g * a.sg + e * a.si;
      } else {
        const int64_t o = e / a.inner;
        off = o * a.so + g * a.sg + (e - o * a.inner) * a.si;
      }
      const acc_t v = to_acc(x[off]);
      slot = slot_of<acc_t>(v, lo, hi, width, nb, bins);
      nz += (v <= eps && v >= -eps);
      if (v - v == acc_t(0)) {  // finite
        if (n == 0) K = v;
        const acc_t d = v - K;
        s1 += d;
        s2 += d * d;
        ++n;
        mn = fmin(mn, v);
        mx = fmax(mx, v);
      }
    }
    const unsigned peers = __match_any_sync(0xffffffffu, slot);
    if (slot >= 0 && lane == __ffs(peers) - 1) {
      if (shared_hist) {
        atomicAdd(&sh_hist[slot], __popc(peers));
      } else {
        atomicAdd(counter(a, g, bins, slot), (unsigned long long)__popc(peers));
      }
    }
  }

  // this thread's shifted sums -> (n, mean, M2)
  Stats<acc_t> m;
  static_cast<Moments<acc_t>&>(m) = from_shifted(n, K, s1, s2);
  m.mn = mn;
  m.mx = mx;
  m = warp_merge(m);
  for (int d = 16; d > 0; d >>= 1) nz += __shfl_down_sync(0xffffffffu, nz, d);
  if (lane == 0) {
    sh_mom[warp] = m;
    atomicAdd(&sh_nz, (unsigned long long)nz);
  }
  __syncthreads();
  if (warp == 0) {
    Stats<acc_t> w;
    if (lane < kWarps) {
      w = sh_mom[lane];
    } else {
      w.n = 0; w.mean = 0; w.m2 = 0; w.mn = inf_of<acc_t>(); w.mx = -inf_of<acc_t>();
    }
    w = warp_merge(w);
    if (lane == 0) {
      const int64_t p = g * a.splits + split;
      long long* ns = static_cast<long long*>(a.workspace);
      acc_t* fs = reinterpret_cast<acc_t*>(ns + a.groups * a.splits);
      ns[p] = w.n;
      fs[p * 4 + 0] = w.mean;
      fs[p * 4 + 1] = w.m2;
      fs[p * 4 + 2] = w.mn;
      fs[p * 4 + 3] = w.mx;
      if (sh_nz) atomicAdd(reinterpret_cast<unsigned long long*>(a.counts + g * kCountCols + kColNearZero), sh_nz);
    }
  }
  if (shared_hist) {
    for (int s = threadIdx.x; s < nslots; s += kThreads) {
      const int c = sh_hist[s];
      if (c == 0) continue;
      atomicAdd(counter(a, g, bins, s), (unsigned long long)c);
    }
  }
}

template <typename acc_t>
__global__ void act_stats_finalize(ActStatsArgs a) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= a.groups) return;
  const long long* ns = static_cast<const long long*>(a.workspace);
  const acc_t* fs = reinterpret_cast<const acc_t*>(ns + a.groups * a.splits);
  Stats<acc_t> m;
  m.n = 0; m.mean = 0; m.m2 = 0; m.mn = inf_of<acc_t>(); m.mx = -inf_of<acc_t>();
  for (int64_t s = 0; s < a.splits; ++s) {
    const int64_t p = g * a.splits + s;
    Stats<acc_t> b;
    b.n = ns[p]; b.mean = fs[p * 4]; b.m2 = fs[p * 4 + 1]; b.mn = fs[p * 4 + 2]; b.mx = fs[p * 4 + 3];
    m = merge(m, b);
  }
  const acc_t nan = acc_t(NAN);
  acc_t* out = static_cast<acc_t*>(a.fstats) + g * 4;
  out[0] = m.n ? m.mean : nan;
  out[1] = m.n ? m.m2 : acc_t(0);
  out[2] = m.n ? m.mn : nan;
  out[3] = m.n ? m.mx : nan;
  a.counts[g * kCountCols + kColCount] = a.outer * a.inner;
}

template <typename T>
cudaError_t launch(const ActStatsArgs& a, cudaStream_t stream) {
  using acc_t = typename Acc<T>::type;
  if (a.groups == 0) return cudaSuccess;
  const int nslots = a.bins + kNumExtra;
  const size_t smem = nslots <= kMaxSharedSlots ? size_t(nslots) * sizeof(int) : 0;
  const int64_t blocks = a.groups * a.splits;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  if (a.outer * a.inner > 0) {
    act_stats_partial<T><<<unsigned(blocks), kThreads, smem, stream>>>(a);
  } else {
    // Nothing to read: the finalize kernel still writes NaN stats and zero counts, from an empty workspace.
    cudaError_t err = cudaMemsetAsync(a.workspace, 0, size_t(a.groups * a.splits) * sizeof(long long), stream);
    if (err != cudaSuccess) return err;
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int fin_threads = 128;
  act_stats_finalize<acc_t><<<unsigned((a.groups + fin_threads - 1) / fin_threads), fin_threads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t act_stats_launch(const ActStatsArgs& a, cudaStream_t stream) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return launch<T>(a, stream))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace pydl
