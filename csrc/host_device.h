// PYDL_HD marks a function that both CUDA kernels and host code call: __host__ __device__ under nvcc, a plain
// inline function for the host compiler (the CPU kernels, the glue, and the CUDA emulator's build of the .cu).
#pragma once

#ifdef __CUDACC__
#define PYDL_HD __host__ __device__ __forceinline__
#else
#define PYDL_HD inline
#endif
