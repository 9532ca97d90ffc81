// What a kernel computes in, for each storage dtype: float for fp32/fp16/bf16 (16-bit types only load and
// store: their arithmetic would round at every step), double for double. to_acc widens a loaded value,
// from_acc rounds a result back to nearest even, as torch does. __host__ __device__, so index and epilogue
// code built on them can run in a host loop too (tests/test_conv2d.py does).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype.h"

namespace pydl {
namespace cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__host__ __device__ __forceinline__ float to_acc(float v) { return v; }
__host__ __device__ __forceinline__ double to_acc(double v) { return v; }
__host__ __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __host__ __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __host__ __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __host__ __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __host__ __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

}  // namespace cuda
}  // namespace pydl

// Runs the statements that follow DT with T bound to the storage type DT names; falls out of the switch for a
// value outside the enum (the caller returns its error after it). Each statement list must leave the switch
// (return, or break). Kernels are templates over T and the launcher structs carry a runtime DType: this is the
// one place the two meet.
#define PYDL_DTYPE_CASE_(ENUM, CTYPE, T, ...) \
  case ::pydl::cuda::DType::ENUM: {           \
    using T = CTYPE;                          \
    __VA_ARGS__;                              \
  }
#define PYDL_DTYPE_SWITCH(DT, T, ...)                         \
  switch (DT) {                                               \
    PYDL_DTYPE_CASE_(kFloat, float, T, __VA_ARGS__)           \
    PYDL_DTYPE_CASE_(kHalf, __half, T, __VA_ARGS__)           \
    PYDL_DTYPE_CASE_(kBFloat16, __nv_bfloat16, T, __VA_ARGS__) \
    PYDL_DTYPE_CASE_(kDouble, double, T, __VA_ARGS__)         \
  }
