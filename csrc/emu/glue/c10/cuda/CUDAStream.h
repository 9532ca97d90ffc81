// Stand-in for <c10/cuda/CUDAStream.h> in the emulated backend (see csrc/emu/cuda_glue.h): the emulated device
// runs one launch after another on the calling thread, so there is one stream and it is always "current".
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime_api.h>  // the emulator's stand-in: cudaStream_t

namespace c10 {
namespace cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return stream(); }
  c10::DeviceIndex device_index() const { return -1; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return CUDAStream{}; }
inline CUDAStream getDefaultCUDAStream(c10::DeviceIndex = -1) { return CUDAStream{}; }

}  // namespace cuda
}  // namespace c10
