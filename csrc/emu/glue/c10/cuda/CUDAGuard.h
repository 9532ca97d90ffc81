// Stand-in for <c10/cuda/CUDAGuard.h> in the emulated backend (see csrc/emu/cuda_glue.h).
//
// On a GPU the guard makes the tensor's device current for the op's launches. The emulated device is one
// process-wide object whose state (the running grid, its fibers, shared memory) a launch owns from start to
// end; two threads launching at once would tear it. Every op of the glue takes a guard before it launches
// anything, so the guard is where the emulated device is taken: held for the op's lifetime, it makes the
// ops of all emulated units run one at a time, like launches on one stream. (Recursive: an op's glue may
// call another op's.)
#pragma once

#include <c10/core/Device.h>

#include <mutex>

#include "CUDAStream.h"

namespace c10 {
namespace cuda {
namespace emu_detail {
// An inline function's static is one object in the whole process (GCC makes it a unique symbol), shared by
// every pydl_cuda_emu_<op> library, as the device is.
inline std::recursive_mutex& device_lock() {
  static std::recursive_mutex m;
  return m;
}
}  // namespace emu_detail

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) : hold_(emu_detail::device_lock()) {}
  explicit CUDAGuard(c10::DeviceIndex) : hold_(emu_detail::device_lock()) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;

 private:
  std::lock_guard<std::recursive_mutex> hold_;
};

struct OptionalCUDAGuard {
  OptionalCUDAGuard() : hold_(emu_detail::device_lock()) {}
  explicit OptionalCUDAGuard(std::optional<c10::Device>) : hold_(emu_detail::device_lock()) {}

 private:
  std::lock_guard<std::recursive_mutex> hold_;
};

}  // namespace cuda
}  // namespace c10
