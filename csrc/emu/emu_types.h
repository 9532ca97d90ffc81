// emu_types.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). The CUDA language and runtime declarations kernel code sees: the qualifiers (as nothing), the vector
// types with the device's alignment, dim3, error codes, and the attribute enums and structs of the runtime API.
#pragma once

#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700  // macOS hides the (deprecated, still working) ucontext API without it
#endif
#include <ucontext.h>
#include <unistd.h>
#include <dlfcn.h>
#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#define PYDL_CUDA_EMU 1  // code that must know it runs on the emulator can test this
#define PYDL_EMU_NOSAN __attribute__((no_sanitize("thread")))
#define PYDL_EMU_FN inline PYDL_EMU_NOSAN

// CUDA's math API has isfinite / isinf / isnan / signbit as plain global functions in device code; C++'s
// <cmath> keeps them in std::. Kernels call them unqualified, so bring them into the global namespace.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // only if the rewrite missed a declaration
#define __constant__ static

// The CUDA vector types, with the device's alignment (a uint4 load is one 16-byte access there).
#define PYDL_EMU_VEC1(N, T) \
  struct N##1 { T x; };     \
  PYDL_EMU_FN N##1 make_##N##1(T x) { return N##1{x}; }
#define PYDL_EMU_VEC2(N, T, A)     \
  struct alignas(A) N##2 { T x, y; }; \
  PYDL_EMU_FN N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define PYDL_EMU_VEC3(N, T)      \
  struct N##3 { T x, y, z; };  \
  PYDL_EMU_FN N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define PYDL_EMU_VEC4(N, T, A)           \
  struct alignas(A) N##4 { T x, y, z, w; }; \
  PYDL_EMU_FN N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define PYDL_EMU_VEC(N, T, A2, A4) PYDL_EMU_VEC1(N, T) PYDL_EMU_VEC2(N, T, A2) PYDL_EMU_VEC3(N, T) PYDL_EMU_VEC4(N, T, A4)
PYDL_EMU_VEC(char, signed char, 2, 4)
PYDL_EMU_VEC(uchar, unsigned char, 2, 4)
PYDL_EMU_VEC(short, short, 4, 8)
PYDL_EMU_VEC(ushort, unsigned short, 4, 8)
PYDL_EMU_VEC(int, int, 8, 16)
PYDL_EMU_VEC(uint, unsigned, 8, 16)
PYDL_EMU_VEC(long, long, 16, 16)
PYDL_EMU_VEC(ulong, unsigned long, 16, 16)
PYDL_EMU_VEC(longlong, long long, 16, 16)
PYDL_EMU_VEC(ulonglong, unsigned long long, 16, 16)
PYDL_EMU_VEC(float, float, 8, 16)
PYDL_EMU_VEC(double, double, 16, 16)
#undef PYDL_EMU_VEC
#undef PYDL_EMU_VEC1
#undef PYDL_EMU_VEC2
#undef PYDL_EMU_VEC3
#undef PYDL_EMU_VEC4
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

typedef int cudaError_t;
typedef void* cudaStream_t;
// The numbers are the CUDA runtime's, so an error code means the same in a log from either.
enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchTimeout = 702,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxRegistersPerMultiprocessor = 82,
  cudaDevAttrMaxBlocksPerMultiprocessor = 106,
  cudaDevAttrReservedSharedMemoryPerBlock = 111,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem, sharedMemPerBlock;
  int regsPerBlock, warpSize;
  int maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
  int major, minor, multiProcessorCount;
  int l2CacheSize, maxThreadsPerMultiProcessor;
  size_t sharedMemPerMultiprocessor;
  int regsPerMultiprocessor;
  size_t sharedMemPerBlockOptin, reservedSharedMemPerBlock;
  int maxBlocksPerMultiProcessor, cooperativeLaunch;
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, cacheModeCA, maxDynamicSharedSizeBytes;
};
