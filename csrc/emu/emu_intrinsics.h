// emu_intrinsics.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). Math and bit intrinsics of the device, as exact host functions (no fast-math approximations).
#pragma once

#include "emu_atomics.h"

// ---- math and bit intrinsics -----------------------------------------------------------------------------------
PYDL_EMU_FN int __popc(unsigned x) { return __builtin_popcount(x); }
PYDL_EMU_FN int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
PYDL_EMU_FN int __ffs(int x) { return __builtin_ffs(x); }
PYDL_EMU_FN int __ffsll(long long x) { return __builtin_ffsll(x); }
PYDL_EMU_FN int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
PYDL_EMU_FN int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
PYDL_EMU_FN unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
PYDL_EMU_FN float __expf(float x) { return std::exp(x); }
PYDL_EMU_FN float __logf(float x) { return std::log(x); }
PYDL_EMU_FN float __fdividef(float a, float b) { return a / b; }
PYDL_EMU_FN float __frcp_rn(float a) { return 1.0f / a; }
PYDL_EMU_FN float __fdiv_rn(float a, float b) { return a / b; }
PYDL_EMU_FN float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
PYDL_EMU_FN double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
PYDL_EMU_FN float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
PYDL_EMU_FN float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
PYDL_EMU_FN double rsqrt(double x) { return 1.0 / std::sqrt(x); }
PYDL_EMU_FN float __int_as_float(int i) { return pydl_emu::from_bits<float>(uint64_t(uint32_t(i))); }
PYDL_EMU_FN int __float_as_int(float f) { return int(uint32_t(pydl_emu::to_bits(f))); }
PYDL_EMU_FN float __uint_as_float(unsigned i) { return pydl_emu::from_bits<float>(uint64_t(i)); }
PYDL_EMU_FN unsigned __float_as_uint(float f) { return unsigned(pydl_emu::to_bits(f)); }
PYDL_EMU_FN double __longlong_as_double(long long i) { return pydl_emu::from_bits<double>(uint64_t(i)); }
PYDL_EMU_FN long long __double_as_longlong(double d) { return (long long)pydl_emu::to_bits(d); }
template <typename T>
__attribute__((always_inline)) inline T __ldg(const T* p) { return *p; }  // not NOSAN: the load is the kernel's
PYDL_EMU_FN int min(int a, int b) { return a < b ? a : b; }
PYDL_EMU_FN int max(int a, int b) { return a > b ? a : b; }
PYDL_EMU_FN unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
PYDL_EMU_FN unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
PYDL_EMU_FN long long min(long long a, long long b) { return a < b ? a : b; }
PYDL_EMU_FN long long max(long long a, long long b) { return a > b ? a : b; }
PYDL_EMU_FN long min(long a, long b) { return a < b ? a : b; }
PYDL_EMU_FN long max(long a, long b) { return a > b ? a : b; }
PYDL_EMU_FN unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
PYDL_EMU_FN unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
PYDL_EMU_FN float min(float a, float b) { return std::fmin(a, b); }
PYDL_EMU_FN float max(float a, float b) { return std::fmax(a, b); }
PYDL_EMU_FN double min(double a, double b) { return std::fmin(a, b); }
PYDL_EMU_FN double max(double a, double b) { return std::fmax(a, b); }
