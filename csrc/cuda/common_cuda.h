// Helpers for the ATen glue of CUDA ops. Deliberately avoids ATen/cuda/CUDAContext.h: that header pulls in
// cuBLAS/cuSPARSE headers, which a minimal CUDA toolkit (nvcc + runtime, as on pydl's CI) does not ship.
#pragma once

#include <cuda_runtime_api.h>
#include <c10/util/Exception.h>

#include "common.h"
#include "cuda/dtype.h"

namespace pydl {

// Multiprocessor count of a device, cached per device (grid sizing wants it on every call).
inline int cuda_sm_count(int device) {
  static int cache[64] = {0};
  if (device >= 0 && device < 64 && cache[device] > 0) return cache[device];
  int n = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, "pydl: cudaDeviceGetAttribute failed: ", cudaGetErrorString(err));
  if (device >= 0 && device < 64) cache[device] = n;
  return n;
}

// torch's dtype -> the launchers' (csrc/cuda/dtype.h). The glue checks its floating inputs first
// (check_floating), so the TypeError is for a caller that skipped that.
inline cuda::DType to_dtype(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat;
    case at::kHalf: return cuda::DType::kHalf;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kDouble: return cuda::DType::kDouble;
    default: PYDL_CHECK_TYPE(false, op, ": unsupported dtype ", t);
  }
  return cuda::DType::kFloat;
}

// A launcher returns cudaGetLastError(): a refused launch or (under the emulator) a checker's report. Raised
// as RuntimeError naming the op and the launch.
inline void check_launch(const char* op, cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "pydl: ", op, " CUDA ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace pydl
