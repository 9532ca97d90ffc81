// batch_norm on the GPU: statistics, normalise (+ fused activation), running update, backward.
// No torch headers: see batch_norm.h. Contract and math: pydl/ops/batch_norm.py.
//
// Two layouts, two shapes of thread block, the same two-stage plan:
//
//   NCL (contiguous):   a channel is N planes of L contiguous values. Reduction block = (channel, split of
//                       the planes), 256 threads walking each plane side by side (coalesced). Elementwise
//                       block = (plane, chunk of it): the channel is one number per block, its constants one
//                       load each.
//   NLC (channels last): a channel is a column of a (rows, C) matrix. Reduction block = 32 channels x 8 rows:
//                       a warp reads 32 consecutive channels of one row (one 128-byte line for fp32). The
//                       elementwise kernels walk the flat array; channel = index % C.
//
// Reductions in two stages, like act_stats: partial kernels write one (count, a, b) per (split, channel) to a
// workspace; a finalize kernel merges each channel's partials in split order (deterministic). Statistics use
// shifted sums inside a thread (sum of v - K and (v - K)^2, K = the first value of the block's range: near
// the mean, so no catastrophic cancellation, and two FMAs a value instead of Welford's division), then Chan's
// pairwise merge across threads, warps and splits.
//
// When x (for the backward: x, and dy if it fits too) fits in the GPU's shared memory, the training forward
// and backward run instead as ONE cooperative kernel each that reads the tensor once and keeps it on chip
// across a grid-wide barrier (batch_norm/coop.cu); the two-stage kernels here are the general path and the
// fallback.
//
// The activation kind is a runtime argument: it is the same for every thread, so its branches cost a
// predictable, uniform jump -- not worth 3x the kernel instantiations. Math is fp32 (fp64 for fp64 input);
// fp16/bf16 only load and store. Index math is 64-bit.
//
// Why one long file: the statistics, apply and backward kernels share the tile walk and the moment
// merges; the cooperative one-read path is already its own part, batch_norm/coop.cu.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "acc.h"
#include "activation.h"
#include "batch_norm.h"
#include "cuda/batch_norm/batch_norm_internal.h"
#include "warp_moments.h"

namespace pydl {
namespace cuda {
namespace {

using bn::load_param;
using bn::store_param;
using bn::Ws;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kColX = 32, kColY = 8;  // NLC reduction block: 32 channels x 8 rows

// Merge a 1-D block's moments (warp shuffles, then warp 0 over the per-warp results); valid in thread 0.
template <typename acc_t>
__device__ Moments<acc_t> block_merge(Moments<acc_t> m) {
  __shared__ Moments<acc_t> sh[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  m = warp_merge(m);
  if (lane == 0) sh[warp] = m;
  __syncthreads();
  if (warp == 0) {
    Moments<acc_t> w;
    w.n = 0; w.mean = 0; w.m2 = 0;
    if (lane < kWarps) w = sh[lane];
    w = warp_merge(w);
    m = w;
  }
  return m;
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {  // valid in thread 0
  __shared__ acc_t sh[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? sh[lane] : acc_t(0);
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) stats_ncl_partial(BnArgs a, int64_t per) {
  using acc_t = typename Acc<T>::type;
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const int64_t o0 = s * per, o1 = o0 + per < a.N ? o0 + per : a.N;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  // the same shift K for the whole block: one broadcast load (bn_splits never makes an empty split)
  const acc_t K = o0 < o1 ? to_acc(x[(o0 * a.C + c) * a.L]) : acc_t(0);
  acc_t s1 = 0, s2 = 0;
  long long n = 0;
  for (int64_t o = o0; o < o1; ++o) {
    const T* __restrict__ p = x + (o * a.C + c) * a.L;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < a.L; i += kThreads) {
      const acc_t d = to_acc(p[i]) - K;
      s1 += d;
      s2 += d * d;
      ++n;
    }
  }
  const Moments<acc_t> m = block_merge(from_shifted(n, K, s1, s2));
  if (threadIdx.x == 0) {
    Ws<acc_t> ws(a);
    ws.n[s * a.C + c] = m.n;
    ws.a[s * a.C + c] = m.mean;
    ws.b[s * a.C + c] = m.m2;
  }
}

template <typename T>
__global__ void __launch_bounds__(kColX * kColY) stats_nlc_partial(BnArgs a, int64_t per) {
  using acc_t = typename Acc<T>::type;
  __shared__ Moments<acc_t> sh[kColY][kColX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kColX + tx, s = blockIdx.y;
  const int64_t rows = a.N * a.L;
  const int64_t r0 = s * per, r1 = r0 + per < rows ? r0 + per : rows;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  Moments<acc_t> m;
  m.n = 0; m.mean = 0; m.m2 = 0;
  if (c < a.C) {
    const acc_t K = r0 < r1 ? to_acc(x[r0 * a.C + c]) : acc_t(0);
    acc_t s1 = 0, s2 = 0;
    long long n = 0;
    for (int64_t r = r0 + ty; r < r1; r += kColY) {
      const acc_t d = to_acc(x[r * a.C + c]) - K;
      s1 += d;
      s2 += d * d;
      ++n;
    }
    m = from_shifted(n, K, s1, s2);
  }
  sh[ty][tx] = m;
  __syncthreads();
  if (ty == 0 && c < a.C) {
    for (int y = 1; y < kColY; ++y) m = merge(m, sh[y][tx]);
    Ws<acc_t> ws(a);
    ws.n[s * a.C + c] = m.n;
    ws.a[s * a.C + c] = m.mean;
    ws.b[s * a.C + c] = m.m2;
  }
}

template <typename acc_t>
__global__ void stats_finalize(BnArgs a, bool forward) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  Ws<acc_t> ws(a);
  Moments<acc_t> m;
  m.n = 0; m.mean = 0; m.m2 = 0;
  for (int64_t s = 0; s < a.splits; ++s) {  // in split order: deterministic
    Moments<acc_t> b;
    b.n = ws.n[s * a.C + c]; b.mean = ws.a[s * a.C + c]; b.m2 = ws.b[s * a.C + c];
    m = merge(m, b);
  }
  static_cast<acc_t*>(a.mean)[c] = m.mean;
  if (forward) {
    const acc_t var = m.m2 / acc_t(m.n > 0 ? m.n : 1);
    static_cast<acc_t*>(a.var)[c] = var;
    static_cast<acc_t*>(a.invstd)[c] = acc_t(1) / sqrt(var + acc_t(a.eps));  // IEEE sqrt: no fast-math here
  } else {
    static_cast<acc_t*>(a.var)[c] = m.m2;
  }
}

template <typename acc_t>
__global__ void eval_stats(BnArgs a) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  const acc_t m = acc_t(load_param(a.running_mean, a.param_dtype, c));
  const acc_t v = acc_t(load_param(a.running_var, a.param_dtype, c));
  static_cast<acc_t*>(a.mean)[c] = m;
  static_cast<acc_t*>(a.var)[c] = v;
  static_cast<acc_t*>(a.invstd)[c] = acc_t(1) / sqrt(v + acc_t(a.eps));
}

// ---------------------------------------------------------------------------------------------------
// Per-channel constants: z = x * scale + shift; dx = k * (dz - mean_dz - (x - mean) * proj)
// ---------------------------------------------------------------------------------------------------

template <typename acc_t>
__global__ void channel_consts(BnArgs a, bool grad) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  Ws<acc_t> ws(a);
  const int64_t C = a.C;
  const acc_t mean = static_cast<const acc_t*>(a.mean)[c], invstd = static_cast<const acc_t*>(a.invstd)[c];
  const acc_t w = a.weight ? acc_t(load_param(a.weight, a.param_dtype, c)) : acc_t(1);
  const acc_t b = a.bias ? acc_t(load_param(a.bias, a.param_dtype, c)) : acc_t(0);
  const acc_t scale = invstd * w;
  ws.consts[c] = mean;
  ws.consts[C + c] = scale;
  ws.consts[2 * C + c] = b - mean * scale;
  if (grad) {
    const acc_t inv_n = acc_t(1) / acc_t(a.count > 0 ? a.count : 1);
    ws.consts[3 * C + c] = scale;  // k = w * invstd
    ws.consts[4 * C + c] = a.use_batch_stats ? static_cast<const acc_t*>(a.sum_dz)[c] * inv_n : acc_t(0);
    ws.consts[5 * C + c] =
        a.use_batch_stats ? static_cast<const acc_t*>(a.sum_dz_xmu)[c] * invstd * invstd * inv_n : acc_t(0);
  }
}

// ---------------------------------------------------------------------------------------------------
// Elementwise: apply and elemt, one kernel per layout, both ops through a functor
// ---------------------------------------------------------------------------------------------------

// An elementwise op is a functor with two parts: at(c) reads channel c's constants (once per block in NCL,
// where a block never leaves its plane: the stores to y cannot be proven not to alias them, so the compiler
// would otherwise reload them for every element), and operator()(e, k) does element e.
template <typename T, typename acc_t>
struct ApplyOp {
  struct K { acc_t scale, shift; };
  const T* __restrict__ x;
  T* __restrict__ y;
  const acc_t* consts;
  int64_t C;
  Act<acc_t> act;
  __device__ __forceinline__ K at(int64_t c) const { return {consts[C + c], consts[2 * C + c]}; }
  __device__ __forceinline__ void operator()(int64_t e, const K& k) const {
    y[e] = from_acc<T>(act.forward(to_acc(x[e]) * k.scale + k.shift));
  }
};

template <typename T, typename acc_t>
struct ElemtOp {
  struct K { acc_t mean, scale, shift, k, mean_dz, proj; };
  const T* __restrict__ x;
  const T* __restrict__ dy;
  T* __restrict__ dx;
  const acc_t* consts;
  int64_t C;
  Act<acc_t> act;
  __device__ __forceinline__ K at(int64_t c) const {
    return {consts[c], consts[C + c], consts[2 * C + c], consts[3 * C + c], consts[4 * C + c], consts[5 * C + c]};
  }
  __device__ __forceinline__ void operator()(int64_t e, const K& q) const {
    const acc_t xv = to_acc(x[e]);
    const acc_t dz = act.backward(to_acc(dy[e]), xv * q.scale + q.shift);
    // (x - mean) * proj is the path through the batch statistics: exactly 0 in eval (proj == 0), where the
    // product would still be NaN for an infinite x
    const acc_t through_stats = q.proj == acc_t(0) ? acc_t(0) : (xv - q.mean) * q.proj;
    dx[e] = from_acc<T>(q.k * (dz - q.mean_dz - through_stats));
  }
};

// NCL: blockIdx.x = plane (n, c); blockIdx.y strides over chunks of kThreads*4 values of the plane. Four
// independent loads per thread per chunk keep enough bytes in flight to cover memory latency.
template <typename F>
__global__ void __launch_bounds__(kThreads) elementwise_ncl(F f, int64_t C, int64_t L) {
  const int64_t plane = blockIdx.x, base = plane * L;
  const auto k = f.at(plane % C);
  for (int64_t i0 = int64_t(blockIdx.y) * kThreads * 4; i0 < L; i0 += int64_t(gridDim.y) * kThreads * 4) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = i0 + j * kThreads + threadIdx.x;
      if (i < L) f(base + i, k);
    }
  }
}

// NLC: a grid-stride walk of the flat array; the channel is the index modulo C (its constants: L1 hits).
template <typename F>
__global__ void __launch_bounds__(kThreads) elementwise_nlc(F f, int64_t C, int64_t numel) {
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < numel; e += int64_t(gridDim.x) * kThreads)
    f(e, f.at(e % C));
}

// ---------------------------------------------------------------------------------------------------
// Backward reduction: sum(dz), sum(dz * (x - mean))
// ---------------------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_ncl_partial(BnArgs a, int64_t per) {
  using acc_t = typename Acc<T>::type;
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const int64_t o0 = s * per, o1 = o0 + per < a.N ? o0 + per : a.N;
  Ws<acc_t> ws(a);
  const int64_t C = a.C;
  const acc_t mean = ws.consts[c], scale = ws.consts[C + c], shift = ws.consts[2 * C + c];
  const Act<acc_t> act{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ dy = static_cast<const T*>(a.dy);
  acc_t p = 0, q = 0;
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t base = (o * C + c) * a.L;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < a.L; i += kThreads) {
      const acc_t xv = to_acc(x[base + i]);
      const acc_t dz = act.backward(to_acc(dy[base + i]), xv * scale + shift);
      p += dz;
      q += dz * (xv - mean);
    }
  }
  p = block_sum(p);
  q = block_sum(q);
  if (threadIdx.x == 0) {
    ws.a[s * C + c] = p;
    ws.b[s * C + c] = q;
  }
}

template <typename T>
__global__ void __launch_bounds__(kColX * kColY) reduce_nlc_partial(BnArgs a, int64_t per) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t shp[kColY][kColX], shq[kColY][kColX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t C = a.C, c = int64_t(blockIdx.x) * kColX + tx, s = blockIdx.y;
  const int64_t rows = a.N * a.L;
  const int64_t r0 = s * per, r1 = r0 + per < rows ? r0 + per : rows;
  Ws<acc_t> ws(a);
  acc_t p = 0, q = 0;
  if (c < C) {
    const acc_t mean = ws.consts[c], scale = ws.consts[C + c], shift = ws.consts[2 * C + c];
    const Act<acc_t> act{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
    const T* __restrict__ x = static_cast<const T*>(a.x);
    const T* __restrict__ dy = static_cast<const T*>(a.dy);
    for (int64_t r = r0 + ty; r < r1; r += kColY) {
      const acc_t xv = to_acc(x[r * C + c]);
      const acc_t dz = act.backward(to_acc(dy[r * C + c]), xv * scale + shift);
      p += dz;
      q += dz * (xv - mean);
    }
  }
  shp[ty][tx] = p;
  shq[ty][tx] = q;
  __syncthreads();
  if (ty == 0 && c < C) {
    for (int y = 1; y < kColY; ++y) {
      p += shp[y][tx];
      q += shq[y][tx];
    }
    ws.a[s * C + c] = p;
    ws.b[s * C + c] = q;
  }
}

template <typename acc_t>
__global__ void reduce_finalize(BnArgs a) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= a.C) return;
  Ws<acc_t> ws(a);
  acc_t p = 0, q = 0;
  for (int64_t s = 0; s < a.splits; ++s) {
    p += ws.a[s * a.C + c];
    q += ws.b[s * a.C + c];
  }
  static_cast<acc_t*>(a.sum_dz)[c] = p;
  static_cast<acc_t*>(a.sum_dz_xmu)[c] = q;
  static_cast<acc_t*>(a.dweight)[c] = q * static_cast<const acc_t*>(a.invstd)[c];
}

__global__ void update_running(void* rm, void* rv, DType rdt, const void* mean, const void* var, bool acc_double,
                               const int64_t* nbt, double momentum, double bessel, int64_t C) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double f = nbt ? 1.0 / double(*nbt) : momentum;  // momentum=None: cumulative average, no host sync
  const DType adt = acc_double ? DType::kDouble : DType::kFloat;
  const double m = load_param(mean, adt, c), v = load_param(var, adt, c);
  store_param(rm, rdt, c, (1 - f) * load_param(rm, rdt, c) + f * m);
  store_param(rv, rdt, c, (1 - f) * load_param(rv, rdt, c) + f * v * bessel);
}

// ---------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------

unsigned small_grid(int64_t C, int threads) { return unsigned((C + threads - 1) / threads); }

template <typename T>
cudaError_t stats_impl(const BnArgs& a, bool forward, cudaStream_t st) {
  using acc_t = typename Acc<T>::type;
  if (a.C == 0) return cudaSuccess;
  if (a.cl) {
    const int64_t rows = a.N * a.L, per = (rows + a.splits - 1) / a.splits;
    const dim3 grid(unsigned((a.C + kColX - 1) / kColX), unsigned(a.splits));
    stats_nlc_partial<T><<<grid, dim3(kColX, kColY), 0, st>>>(a, per);
  } else {
    if (a.C > INT_MAX) return cudaErrorInvalidConfiguration;
    const int64_t per = (a.N + a.splits - 1) / a.splits;
    stats_ncl_partial<T><<<dim3(unsigned(a.C), unsigned(a.splits)), kThreads, 0, st>>>(a, per);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  stats_finalize<acc_t><<<small_grid(a.C, 128), 128, 0, st>>>(a, forward);
  return cudaGetLastError();
}

template <typename T>
cudaError_t consts_impl(const BnArgs& a, bool grad, cudaStream_t st) {
  using acc_t = typename Acc<T>::type;
  channel_consts<acc_t><<<small_grid(a.C, 128), 128, 0, st>>>(a, grad);
  return cudaGetLastError();
}

template <typename F>
cudaError_t elementwise(const BnArgs& a, const F& f, cudaStream_t st) {
  const int64_t numel = a.N * a.C * a.L;
  if (numel == 0) return cudaSuccess;
  if (a.cl) {
    int64_t blocks = (numel + kThreads - 1) / kThreads;
    if (blocks > 65536 * 8) blocks = 65536 * 8;  // grid-stride beyond that
    elementwise_nlc<<<unsigned(blocks), kThreads, 0, st>>>(f, a.C, numel);
  } else {
    const int64_t planes = a.N * a.C;
    if (planes > INT_MAX) return cudaErrorInvalidConfiguration;
    int64_t chunks = (a.L + kThreads * 4 - 1) / (kThreads * 4);
    if (chunks > 65535) chunks = 65535;
    elementwise_ncl<<<dim3(unsigned(planes), unsigned(chunks)), kThreads, 0, st>>>(f, a.C, a.L);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t apply_impl(const BnArgs& a, cudaStream_t st) {
  using acc_t = typename Acc<T>::type;
  if (a.C == 0) return cudaSuccess;
  cudaError_t err = consts_impl<T>(a, false, st);
  if (err != cudaSuccess) return err;
  Ws<acc_t> ws(a);
  ApplyOp<T, acc_t> f{static_cast<const T*>(a.x), static_cast<T*>(a.out), ws.consts, a.C,
                      Act<acc_t>{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)}};
  return elementwise(a, f, st);
}

template <typename T>
cudaError_t reduce_impl(const BnArgs& a, cudaStream_t st) {
  using acc_t = typename Acc<T>::type;
  if (a.C == 0) return cudaSuccess;
  cudaError_t err = consts_impl<T>(a, false, st);
  if (err != cudaSuccess) return err;
  if (a.cl) {
    const int64_t rows = a.N * a.L, per = (rows + a.splits - 1) / a.splits;
    const dim3 grid(unsigned((a.C + kColX - 1) / kColX), unsigned(a.splits));
    reduce_nlc_partial<T><<<grid, dim3(kColX, kColY), 0, st>>>(a, per);
  } else {
    if (a.C > INT_MAX) return cudaErrorInvalidConfiguration;
    const int64_t per = (a.N + a.splits - 1) / a.splits;
    reduce_ncl_partial<T><<<dim3(unsigned(a.C), unsigned(a.splits)), kThreads, 0, st>>>(a, per);
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  reduce_finalize<acc_t><<<small_grid(a.C, 128), 128, 0, st>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t elemt_impl(const BnArgs& a, cudaStream_t st) {
  using acc_t = typename Acc<T>::type;
  if (a.C == 0) return cudaSuccess;
  cudaError_t err = consts_impl<T>(a, true, st);
  if (err != cudaSuccess) return err;
  Ws<acc_t> ws(a);
  ElemtOp<T, acc_t> f{static_cast<const T*>(a.x), static_cast<const T*>(a.dy), static_cast<T*>(a.out), ws.consts,
                      a.C, Act<acc_t>{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)}};
  return elementwise(a, f, st);
}

}  // namespace

cudaError_t bn_stats_launch(const BnArgs& a, bool forward, cudaStream_t st) {
  if (a.N * a.L == 0) return cudaErrorInvalidValue;
  PYDL_DTYPE_SWITCH(a.dtype, T, return stats_impl<T>(a, forward, st))
  return cudaErrorInvalidValue;
}

cudaError_t bn_eval_stats_launch(const BnArgs& a, cudaStream_t st) {
  if (a.C == 0) return cudaSuccess;
  if (bn_is_double(a)) {
    eval_stats<double><<<small_grid(a.C, 128), 128, 0, st>>>(a);
  } else {
    eval_stats<float><<<small_grid(a.C, 128), 128, 0, st>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t bn_apply_launch(const BnArgs& a, cudaStream_t st) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return apply_impl<T>(a, st))
  return cudaErrorInvalidValue;
}

cudaError_t bn_reduce_launch(const BnArgs& a, cudaStream_t st) {
  if (a.N * a.L == 0) return cudaErrorInvalidValue;
  PYDL_DTYPE_SWITCH(a.dtype, T, return reduce_impl<T>(a, st))
  return cudaErrorInvalidValue;
}

cudaError_t bn_elemt_launch(const BnArgs& a, cudaStream_t st) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return elemt_impl<T>(a, st))
  return cudaErrorInvalidValue;
}

cudaError_t bn_update_running_launch(void* running_mean, void* running_var, DType running_dtype, const void* mean,
                                     const void* var, bool acc_double, const int64_t* nbt, double momentum,
                                     double bessel, int64_t C, cudaStream_t st) {
  if (C == 0) return cudaSuccess;
  update_running<<<small_grid(C, 128), 128, 0, st>>>(running_mean, running_var, running_dtype, mean, var,
                                                     acc_double, nbt, momentum, bessel, C);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pydl
