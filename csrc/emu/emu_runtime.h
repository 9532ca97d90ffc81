// emu_runtime.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). The runtime API: "device" memory is host memory (with red zones), errors (a kernel fault is sticky),
// devices, and the runtime's own launch calls.
#pragma once

#include "emu_intrinsics.h"

// ---- runtime API: "device" memory is host memory here ----------------------------------------------------------
namespace pydl_emu {
PYDL_EMU_FN cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) st().last_error = e;
  return e;
}
}  // namespace pydl_emu
// Allocations get an untracked red zone on each side, so a small overrun lands outside every buffer (memcheck).
PYDL_EMU_FN cudaError_t cudaMalloc(void** p, size_t bytes) {
  constexpr size_t kRed = 256;
  char* raw = static_cast<char*>(std::malloc(bytes + 2 * kRed));
  if (!raw) return pydl_emu::set_error(cudaErrorMemoryAllocation);
  std::memset(raw, 0xA5, bytes + 2 * kRed);
  *p = raw + kRed;
  pydl_emu::track(*p, bytes ? bytes : 1, "cudaMalloc buffer", /*initialized=*/false);
  return cudaSuccess;
}
template <typename T>
PYDL_EMU_FN cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
PYDL_EMU_FN cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  pydl_emu::untrack(p);
  std::free(static_cast<char*>(p) - 256);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memcpy(d, s, n);
  pydl_emu::mark_written(d, n);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) {
  return cudaMemcpy(d, s, n, k);
}
PYDL_EMU_FN cudaError_t cudaMemset(void* d, int v, size_t n) {
  std::memset(d, v, n);
  pydl_emu::mark_written(d, n);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t = nullptr) { return cudaMemset(d, v, n); }
// cudaGetLastError returns the last error and resets it -- except a kernel fault (a check's finding), which is
// sticky as on a GPU: every later call reports it and every later launch fails with it, so a launcher that
// clears a refused launch and falls back (batch norm's one-pass path does) cannot hide a finding. On a GPU the
// context is then lost for good; the emulator recovers once the fault's text has been read with
// cudaGetErrorString (which is how every launcher raises it) or after pydl_emu::clear_fault() /
// cudaDeviceReset(), so one test's bug does not poison the next.
PYDL_EMU_FN cudaError_t cudaGetLastError() {
  pydl_emu::State& s = pydl_emu::st();
  const cudaError_t e = s.pending != cudaSuccess ? s.pending : s.last_error;
  s.last_error = cudaSuccess;
  return e;
}
PYDL_EMU_FN cudaError_t cudaPeekAtLastError() {
  pydl_emu::State& s = pydl_emu::st();
  return s.pending != cudaSuccess ? s.pending : s.last_error;
}
namespace pydl_emu {
// The pending kernel fault, if any (cudaSuccess if none); clear_fault() forgets it and its report.
PYDL_EMU_FN cudaError_t fault() { return st().pending; }
PYDL_EMU_FN void clear_fault() {
  st().pending = cudaSuccess;
  st().last_error = cudaSuccess;
  st().report.clear();
}
}  // namespace pydl_emu
PYDL_EMU_FN cudaError_t cudaDeviceReset() {
  pydl_emu::clear_fault();
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaDeviceSynchronize() { return pydl_emu::st().pending; }
PYDL_EMU_FN cudaError_t cudaStreamSynchronize(cudaStream_t) { return pydl_emu::st().pending; }
PYDL_EMU_FN const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
  }
  return "cudaErrorUnknown";
}
// The driver's text, followed by the emulator's report of why (the check's finding or the refused launch).
PYDL_EMU_FN const char* cudaGetErrorString(cudaError_t e) {
  const char* base = "unknown error";
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: base = "invalid argument"; break;
    case cudaErrorMemoryAllocation: base = "out of memory"; break;
    case cudaErrorInvalidConfiguration: base = "invalid configuration argument"; break;
    case cudaErrorInvalidDeviceFunction: base = "invalid device function"; break;
    case cudaErrorInvalidDevice: base = "invalid device ordinal"; break;
    case cudaErrorIllegalAddress: base = "an illegal memory access was encountered"; break;
    case cudaErrorLaunchTimeout: base = "the launch timed out and was terminated"; break;
    case cudaErrorLaunchFailure: base = "unspecified launch failure"; break;
    case cudaErrorCooperativeLaunchTooLarge: base = "too many blocks in cooperative launch"; break;
    case cudaErrorNotSupported: return "operation not supported";
  }
  static std::string text;
  pydl_emu::State& s = pydl_emu::st();
  const std::string& r = s.report;
  text = r.empty() ? std::string(base) : std::string(base) + " (" + r + ")";
  if (e == s.pending) s.pending = cudaSuccess;  // the fault has been read out: see cudaGetLastError
  return text.c_str();
}
PYDL_EMU_FN cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : pydl_emu::set_error(cudaErrorInvalidDevice); }
PYDL_EMU_FN cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}

PYDL_EMU_FN cudaError_t cudaLaunchKernel(const void* fn, dim3 grid, dim3 block, void** args, size_t smem = 0,
                                         cudaStream_t = nullptr) {
  return pydl_emu::launch_erased(fn, grid, block, args, smem, false);
}
PYDL_EMU_FN cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                                    size_t smem = 0, cudaStream_t = nullptr) {
  return pydl_emu::launch_erased(fn, grid, block, args, smem, true);
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaLaunchKernel(void (*k)(A...), dim3 grid, dim3 block, void** args, size_t smem = 0,
                                         cudaStream_t st = nullptr) {
  pydl_emu::register_kernel(k);
  return cudaLaunchKernel(reinterpret_cast<const void*>(k), grid, block, args, smem, st);
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaLaunchCooperativeKernel(void (*k)(A...), dim3 grid, dim3 block, void** args,
                                                    size_t smem = 0, cudaStream_t st = nullptr) {
  pydl_emu::register_kernel(k);
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(k), grid, block, args, smem, st);
}
