// What batch_norm's CUDA files share (csrc/cuda/batch_norm.cu: the two-stage kernels; batch_norm/coop.cu: the
// one-read cooperative ones): per-channel parameter access and the workspace's layout. No __shared__ here: the
// emulated build rewrites shared declarations in a .cu only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/acc.h"
#include "cuda/batch_norm.h"

namespace pydl {
namespace cuda {
namespace bn {

// weight / bias / running stats: x's dtype or fp32; read one per channel, so a runtime switch is fine
__device__ __forceinline__ double load_param(const void* p, DType dt, int64_t c) {
  switch (dt) {
    case DType::kFloat: return static_cast<const float*>(p)[c];
    case DType::kHalf: return __half2float(static_cast<const __half*>(p)[c]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[c]);
    default: return static_cast<const double*>(p)[c];
  }
}

__device__ __forceinline__ void store_param(void* p, DType dt, int64_t c, double v) {
  switch (dt) {
    case DType::kFloat: static_cast<float*>(p)[c] = float(v); break;
    case DType::kHalf: static_cast<__half*>(p)[c] = __float2half_rn(float(v)); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[c] = __float2bfloat16_rn(float(v)); break;
    default: static_cast<double*>(p)[c] = v; break;
  }
}

// Workspace views: partial counts (int64), two accumulator planes (splits x C each), then 6 x C constants:
// mean, scale, shift, k, mean_dz, proj.
template <typename acc_t>
struct Ws {
  long long* n;
  acc_t *a, *b, *consts;
  __host__ __device__ Ws(const BnArgs& args) {
    n = static_cast<long long*>(args.workspace);
    a = reinterpret_cast<acc_t*>(n + args.splits * args.C);
    b = a + args.splits * args.C;
    consts = b + args.splits * args.C;
    plane_mean = consts + 6 * args.C;
    plane_m2 = plane_mean + args.N * args.C;
  }
  acc_t *plane_mean, *plane_m2;
};

}  // namespace bn
}  // namespace cuda
}  // namespace pydl
