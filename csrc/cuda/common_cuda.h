// Helpers for the ATen glue of CUDA ops. Deliberately avoids ATen/cuda/CUDAContext.h: that header pulls in
// cuBLAS/cuSPARSE headers, which a minimal CUDA toolkit (nvcc + runtime, as on pydl's CI) does not ship.
#pragma once

#include <cuda_runtime_api.h>
#include <c10/util/Exception.h>

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

}  // namespace pydl
