// batch_norm on the GPU, part: the one-read training forward and backward (NCL), cooperative kernels that keep
// x (and dy) in shared memory across a grid-wide barrier. csrc/cuda/batch_norm.cu has the two-stage kernels
// these fall back to, and the file comment on both; the launchers here return cudaErrorNotSupported when the
// tensor does not fit or the device cannot launch cooperatively, and the glue then takes that path.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "activation.h"
#include "cuda/acc.h"
#include "cuda/batch_norm.h"
#include "cuda/batch_norm/batch_norm_internal.h"
#include "cuda/warp_moments.h"

namespace pydl {
namespace cuda {
namespace {

using bn::load_param;
using bn::Ws;

// ---------------------------------------------------------------------------------------------------
// The one-read training forward (NCL): x lives in shared memory across a grid-wide barrier
// ---------------------------------------------------------------------------------------------------
//
// The two-kernel forward reads x twice (statistics, then normalise). The second read is avoidable when the
// whole tensor fits in the GPU's shared memory -- 228 KB x 132 SMs is ~30 MB on an H100, e.g. 64x64x32x32
// fp32. One block per SM (launched cooperatively, so all are resident at once) copies its range of planes
// into shared memory, computes each plane's exact two-pass (mean, M2) from there and publishes it; after
// grid.sync() every plane's moments are visible, each warp merges its channel's N plane moments (in the same
// order in every block, so every block derives the same mean and invstd), and normalises its plane from
// shared memory. HBM traffic: x read once, y written once -- a copy's.

constexpr int kOnePassThreads = 1024;

template <typename T>
__global__ void __launch_bounds__(kOnePassThreads) forward_onepass_ncl(BnArgs a, int64_t planes_per_block) {
  using acc_t = typename Acc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sx = reinterpret_cast<T*>(smem_raw);
  const int64_t C = a.C, L = a.L, P = a.N * a.C;
  const int64_t p0 = int64_t(blockIdx.x) * planes_per_block;
  const int64_t p1 = p0 + planes_per_block < P ? p0 + planes_per_block : P;
  const int64_t len = p1 > p0 ? (p1 - p0) * L : 0;
  const T* __restrict__ x = static_cast<const T*>(a.x) + p0 * L;

  // 1. this block's planes -> shared memory: one contiguous span, 16-byte loads when it is aligned
  constexpr int kVec = 16 / sizeof(T);
  if (len % kVec == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const uint4* src = reinterpret_cast<const uint4*>(x);
    uint4* dst = reinterpret_cast<uint4*>(sx);
    // unrolled: several independent 16-byte loads in flight per thread, to cover HBM latency
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < len / kVec; i += kOnePassThreads) dst[i] = src[i];
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kOnePassThreads) sx[i] = x[i];
  }
  __syncthreads();

  // 2. per plane (one warp each): exact two-pass mean and M2 from shared memory, published to the workspace
  Ws<acc_t> ws(a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = kOnePassThreads / 32;
  for (int64_t p = p0 + warp; p < p1; p += nwarps) {
    const T* v = sx + (p - p0) * L;
    acc_t s = 0;
    for (int64_t i = lane; i < L; i += 32) s += to_acc(v[i]);
    acc_t mean = warp_sum_all(s) / acc_t(L);
    if (!isfinite(mean)) {
      // the plane's sum overflowed where its mean need not (values near the dtype's max): sum pre-scaled
      // values instead, one rounding more per value and only here. `mean` is the same in every lane (a
      // warp-wide sum), so the whole warp takes this branch together and the shuffles inside stay legal.
      acc_t t = 0;
      const acc_t inv_l = acc_t(1) / acc_t(L);
      for (int64_t i = lane; i < L; i += 32) t += to_acc(v[i]) * inv_l;
      mean = warp_sum_all(t);
    }
    acc_t q = 0;
    for (int64_t i = lane; i < L; i += 32) {
      const acc_t d = to_acc(v[i]) - mean;
      q += d * d;
    }
    q = warp_sum_all(q);
    if (lane == 0) {
      ws.plane_mean[p] = mean;
      ws.plane_m2[p] = q;
    }
  }
  cooperative_groups::this_grid().sync();  // every plane's moments are now in global memory

  // 3. per plane: its channel's statistics (merge the N planes of channel c, lanes then a shuffle tree: the
  //    same order in every block), then normalise the plane from shared memory
  const Act<acc_t> act{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
  for (int64_t p = p0 + warp; p < p1; p += nwarps) {
    const int64_t c = p % C;
    Moments<acc_t> m;
    m.n = 0; m.mean = 0; m.m2 = 0;
    for (int64_t n = lane; n < a.N; n += 32) {
      Moments<acc_t> b;
      b.n = L; b.mean = ws.plane_mean[n * C + c]; b.m2 = ws.plane_m2[n * C + c];
      m = merge(m, b);
    }
    m = warp_merge(m);
    const acc_t mean = __shfl_sync(0xffffffffu, m.mean, 0);
    const acc_t var = __shfl_sync(0xffffffffu, m.m2, 0) / acc_t(a.N * L);
    const acc_t invstd = acc_t(1) / sqrt(var + acc_t(a.eps));
    if (p < C && lane == 0) {  // plane (0, c) reports the channel's statistics
      static_cast<acc_t*>(a.mean)[c] = mean;
      static_cast<acc_t*>(a.var)[c] = var;
      static_cast<acc_t*>(a.invstd)[c] = invstd;
    }
    const acc_t w = a.weight ? acc_t(load_param(a.weight, a.param_dtype, c)) : acc_t(1);
    const acc_t scale = invstd * w;
    const acc_t shift = (a.bias ? acc_t(load_param(a.bias, a.param_dtype, c)) : acc_t(0)) - mean * scale;
    const T* v = sx + (p - p0) * L;
    T* __restrict__ y = static_cast<T*>(a.out) + p * L;
    for (int64_t i = lane; i < L; i += 32) y[i] = from_acc<T>(act.forward(to_acc(v[i]) * scale + shift));
  }
}

// Where a one-pass kernel may run: the SM count, and the bytes of dynamic shared memory one block may ask for
// (the opt-in per-block limit counts the kernel's static __shared__ scratch too, so a request of the whole
// limit would fail to launch). cudaErrorNotSupported on a device without cooperative launch.
template <typename K>
cudaError_t onepass_room(K kernel, int* sms, int64_t* room) {
  int dev = 0, smem_optin = 0, coop = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (!coop || *sms <= 0) return cudaErrorNotSupported;
  cudaFuncAttributes attr{};
  err = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(kernel));
  *room = int64_t(smem_optin) - int64_t(attr.sharedSizeBytes);
  return err;
}

// Launches `kernel` cooperatively: `blocks` blocks of kOnePassThreads with `bytes` of dynamic shared memory
// each, when all of them can be resident at once (grid.sync() needs that); cudaErrorNotSupported when not.
template <typename K>
cudaError_t onepass_launch(K kernel, int64_t blocks, int64_t bytes, int sms, void** params, cudaStream_t st) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) return err;
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kOnePassThreads, size_t(bytes));
  if (err != cudaSuccess) return err;
  if (per_sm < 1 || blocks > int64_t(per_sm) * sms) return cudaErrorNotSupported;  // all blocks must co-reside
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(blocks)),
                                     dim3(kOnePassThreads), params, size_t(bytes), st);
}

template <typename T>
cudaError_t onepass_impl(const BnArgs& a, cudaStream_t st) {
  if (a.cl || a.N * a.L < 2 || a.C == 0) return cudaErrorNotSupported;
  auto kernel = forward_onepass_ncl<T>;
  int sms = 0;
  int64_t room = 0;
  const cudaError_t err = onepass_room(kernel, &sms, &room);
  if (err != cudaSuccess) return err;
  const int64_t P = a.N * a.C;
  const int64_t ppb = (P + sms - 1) / sms;  // planes per block, one block per SM
  const int64_t bytes = ppb * a.L * int64_t(sizeof(T));
  if (bytes > room) return cudaErrorNotSupported;  // does not fit: two passes it is
  BnArgs args = a;
  int64_t planes = ppb;
  void* params[] = {&args, &planes};
  return onepass_launch(kernel, (P + ppb - 1) / ppb, bytes, sms, params, st);
}

// The backward's counterpart: x (and dy, when both fit) stay in shared memory between the two sums and dx.
// Per plane (one warp): sum(dz) and sum(dz * (x - mean)) -> workspace; grid.sync(); the channel's sums over
// its N planes (same order in every block); dx from shared memory. HBM traffic: dy, x read once, dx written
// once (dy read twice when only x fits).
template <typename T>
__global__ void __launch_bounds__(kOnePassThreads) backward_onepass_ncl(BnArgs a, int64_t planes_per_block,
                                                                       bool dy_in_smem) {
  using acc_t = typename Acc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t C = a.C, L = a.L, P = a.N * a.C;
  const int64_t p0 = int64_t(blockIdx.x) * planes_per_block;
  const int64_t p1 = p0 + planes_per_block < P ? p0 + planes_per_block : P;
  const int64_t len = p1 > p0 ? (p1 - p0) * L : 0;
  T* sx = reinterpret_cast<T*>(smem_raw);
  T* sdy = sx + planes_per_block * L;  // only when dy_in_smem (the launcher sized the buffer for it)
  const T* __restrict__ gx = static_cast<const T*>(a.x) + p0 * L;
  const T* __restrict__ gdy = static_cast<const T*>(a.dy) + p0 * L;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < len; i += kOnePassThreads) {
    sx[i] = gx[i];
    if (dy_in_smem) sdy[i] = gdy[i];
  }
  __syncthreads();
  const T* dyp = dy_in_smem ? sdy : gdy;  // this block's dy, wherever it lives

  Ws<acc_t> ws(a);
  const Act<acc_t> act{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = kOnePassThreads / 32;
  auto consts = [&](int64_t c, acc_t& mean, acc_t& invstd, acc_t& w, acc_t& scale, acc_t& shift) {
    mean = static_cast<const acc_t*>(a.mean)[c];
    invstd = static_cast<const acc_t*>(a.invstd)[c];
    w = a.weight ? acc_t(load_param(a.weight, a.param_dtype, c)) : acc_t(1);
    scale = invstd * w;
    shift = (a.bias ? acc_t(load_param(a.bias, a.param_dtype, c)) : acc_t(0)) - mean * scale;
  };
  for (int64_t p = p0 + warp; p < p1; p += nwarps) {
    acc_t mean, invstd, w, scale, shift;
    consts(p % C, mean, invstd, w, scale, shift);
    const T* xv = sx + (p - p0) * L;
    const T* dv = dyp + (p - p0) * L;
    acc_t s1 = 0, s2 = 0;
    for (int64_t i = lane; i < L; i += 32) {
      const acc_t xi = to_acc(xv[i]);
      const acc_t dz = act.backward(to_acc(dv[i]), xi * scale + shift);
      s1 += dz;
      s2 += dz * (xi - mean);
    }
    s1 = warp_sum_all(s1);
    s2 = warp_sum_all(s2);
    if (lane == 0) {
      ws.plane_mean[p] = s1;  // the plane arrays hold the two sums here
      ws.plane_m2[p] = s2;
    }
  }
  cooperative_groups::this_grid().sync();

  const acc_t inv_n = acc_t(1) / acc_t(a.N * L);
  for (int64_t p = p0 + warp; p < p1; p += nwarps) {
    const int64_t c = p % C;
    acc_t mean, invstd, w, scale, shift;
    consts(c, mean, invstd, w, scale, shift);
    acc_t s1 = 0, s2 = 0;
    for (int64_t n = lane; n < a.N; n += 32) {
      s1 += ws.plane_mean[n * C + c];
      s2 += ws.plane_m2[n * C + c];
    }
    s1 = warp_sum_all(s1);
    s2 = warp_sum_all(s2);
    if (p < C && lane == 0) {  // plane (0, c) reports the channel's sums
      static_cast<acc_t*>(a.sum_dz)[c] = s1;
      static_cast<acc_t*>(a.sum_dz_xmu)[c] = s2;
      static_cast<acc_t*>(a.dweight)[c] = s2 * invstd;
    }
    const acc_t k = scale, mean_dz = s1 * inv_n, proj = s2 * invstd * invstd * inv_n;
    const T* xv = sx + (p - p0) * L;
    const T* dv = dyp + (p - p0) * L;
    T* __restrict__ dx = static_cast<T*>(a.out) + p * L;
    for (int64_t i = lane; i < L; i += 32) {
      const acc_t xi = to_acc(xv[i]);
      const acc_t dz = act.backward(to_acc(dv[i]), xi * scale + shift);
      dx[i] = from_acc<T>(k * (dz - mean_dz - (xi - mean) * proj));
    }
  }
}

template <typename T>
cudaError_t backward_onepass_impl(const BnArgs& a, cudaStream_t st) {
  if (a.cl || !a.use_batch_stats || a.N * a.L < 2 || a.C == 0) return cudaErrorNotSupported;
  auto kernel = backward_onepass_ncl<T>;
  int sms = 0;
  int64_t room = 0;
  const cudaError_t err = onepass_room(kernel, &sms, &room);
  if (err != cudaSuccess) return err;
  const int64_t P = a.N * a.C, ppb = (P + sms - 1) / sms;
  const int64_t slice = ppb * a.L * int64_t(sizeof(T));
  bool dy_in_smem = 2 * slice <= room;  // both, else x alone (dy is then read twice)
  const int64_t bytes = dy_in_smem ? 2 * slice : slice;
  if (bytes > room) return cudaErrorNotSupported;
  BnArgs args = a;
  int64_t planes = ppb;
  void* params[] = {&args, &planes, &dy_in_smem};
  return onepass_launch(kernel, (P + ppb - 1) / ppb, bytes, sms, params, st);
}

}  // namespace

cudaError_t bn_forward_onepass_launch(const BnArgs& a, cudaStream_t st) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return onepass_impl<T>(a, st))
  return cudaErrorInvalidValue;
}

cudaError_t bn_backward_onepass_launch(const BnArgs& a, cudaStream_t st) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return backward_onepass_impl<T>(a, st))
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace pydl
