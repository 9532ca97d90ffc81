// emu_device_queries.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header
// to include). Device queries, answered as the emulated device (an H100, or an A100): attributes, properties, a
// kernel's attributes, the occupancy calculator (registers are not modelled).
#pragma once

#include "emu_runtime.h"

PYDL_EMU_FN cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev) {
  if (dev != 0) return pydl_emu::set_error(cudaErrorInvalidDevice);
  const pydl_emu::Device& d = pydl_emu::device();
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxBlockDimX: case cudaDevAttrMaxBlockDimY: *v = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *v = 64; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxGridDimY: case cudaDevAttrMaxGridDimZ: *v = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = int(d.smem_default); break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *v = 65536; break;
    case cudaDevAttrMultiProcessorCount: *v = d.sms; break;
    case cudaDevAttrComputeCapabilityMajor: *v = d.cc_major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = d.cc_minor; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = d.threads_per_sm; break;
    case cudaDevAttrL2CacheSize: *v = d.l2; break;
    case cudaDevAttrCooperativeLaunch: *v = 1; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(d.smem_optin); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = int(d.smem_per_sm); break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *v = d.regs_per_sm; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *v = d.blocks_per_sm; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *v = int(d.smem_reserved); break;
    default: return pydl_emu::set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  if (dev != 0) return pydl_emu::set_error(cudaErrorInvalidDevice);
  const pydl_emu::Device& d = pydl_emu::device();
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "%s", d.name);
  p->totalGlobalMem = size_t(80) << 30;
  p->sharedMemPerBlock = d.smem_default;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->major = d.cc_major;
  p->minor = d.cc_minor;
  p->multiProcessorCount = d.sms;
  p->l2CacheSize = d.l2;
  p->maxThreadsPerMultiProcessor = d.threads_per_sm;
  p->sharedMemPerMultiprocessor = d.smem_per_sm;
  p->regsPerMultiprocessor = d.regs_per_sm;
  p->sharedMemPerBlockOptin = d.smem_optin;
  p->reservedSharedMemPerBlock = d.smem_reserved;
  p->maxBlocksPerMultiProcessor = d.blocks_per_sm;
  p->cooperativeLaunch = 1;
  return cudaSuccess;
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaFuncSetAttribute(void (*k)(A...), cudaFuncAttribute attr, int value) {
  pydl_emu::KernelInfo& ki = pydl_emu::register_kernel(k);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) + ki.static_smem > pydl_emu::device().smem_optin) {
      pydl_emu::set_config_error(cudaErrorInvalidValue, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                                 std::to_string(value) + "): more than the device's opt-in limit of " +
                                 std::to_string(pydl_emu::device().smem_optin) + " bytes per block");
      return cudaErrorInvalidValue;
    }
    ki.max_dyn = size_t(value);
  }
  return cudaSuccess;
}
// The static shared memory of a kernel is known once it has run (the emulator allocates it lazily);
// registers are not modelled.
namespace pydl_emu {
PYDL_EMU_FN void fill_func_attributes(cudaFuncAttributes* a, const KernelInfo& ki) {
  std::memset(a, 0, sizeof *a);
  a->sharedSizeBytes = ki.static_smem;
  a->maxThreadsPerBlock = 1024;
  a->numRegs = 32;
  a->ptxVersion = a->binaryVersion = device().cc_major * 10;
  a->maxDynamicSharedSizeBytes = int(ki.max_dyn ? ki.max_dyn : device().smem_default - ki.static_smem);
}
}  // namespace pydl_emu
// The runtime API's untyped form, a kernel passed as `const void*` (as batch_norm.cu's one-pass size check
// does): the same answers, from what the emulator knows of that address.
PYDL_EMU_FN cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void* k) {
  pydl_emu::fill_func_attributes(a, pydl_emu::info(k));
  return cudaSuccess;
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, void (*k)(A...)) {
  pydl_emu::fill_func_attributes(a, pydl_emu::register_kernel(k));
  return cudaSuccess;
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void (*k)(A...), int threads,
                                                                      size_t dyn) {
  pydl_emu::KernelInfo& ki = pydl_emu::register_kernel(k);
  *n = pydl_emu::occupancy(threads, dyn + ki.static_smem);
  return cudaSuccess;
}
