// Stand-in for CUDA's <cuda_bf16.h> in the CPU emulation: the __nv_bfloat16 type, its conversion intrinsics
// and operators, bit-exact with the device.
//
// bfloat16 is the top half of an fp32: same 8-bit exponent, 7 mantissa bits. Narrowing is therefore only a
// rounding of fp32's low 16 bits (a carry ripples into the exponent, and from the largest finite value into
// infinity), done by the same integer routine as fp16 (cuda_fp16.h explains why by hand, and why arithmetic
// in fp32 rounded once is exact: 24 >= 2 * 8 + 2). NaN becomes the canonical NaN 0x7fff, as on the device.
#pragma once

#include "cuda_fp16.h"

struct __nv_bfloat16_raw {
  unsigned short x;
};

struct __nv_bfloat16 {
  using raw_type = __nv_bfloat16_raw;
  unsigned short __x;

  __nv_bfloat16() = default;
  __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  __nv_bfloat16(float f) : __x(pydl_emu::fp::narrow<8, 7>(f, pydl_emu::fp::kNearestEven, 0x7fff)) {}
  __nv_bfloat16(double d);
  __nv_bfloat16(int i) : __nv_bfloat16(double(i)) {}
  __nv_bfloat16(unsigned i) : __nv_bfloat16(double(i)) {}
  __nv_bfloat16(long long i) : __nv_bfloat16(double(i)) {}
  __nv_bfloat16(unsigned long long i) : __nv_bfloat16(double(i)) {}
  operator float() const { return pydl_emu::fp::f32_from(uint32_t(__x) << 16); }
  operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};
typedef __nv_bfloat16 nv_bfloat16;

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16_raw{pydl_emu::fp::narrow<8, 7>(f, pydl_emu::fp::kNearestEven, 0x7fff)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) {
  return __nv_bfloat16_raw{pydl_emu::fp::narrow<8, 7>(f, pydl_emu::fp::kTowardZero, 0x7fff)};
}
inline __nv_bfloat16 __float2bfloat16_rd(float f) {
  return __nv_bfloat16_raw{pydl_emu::fp::narrow<8, 7>(f, pydl_emu::fp::kDown, 0x7fff)};
}
inline __nv_bfloat16 __float2bfloat16_ru(float f) {
  return __nv_bfloat16_raw{pydl_emu::fp::narrow<8, 7>(f, pydl_emu::fp::kUp, 0x7fff)};
}
// widening is the 16-bit shift, NaN payloads and all (as CUDA's own header does it)
inline float __bfloat162float(__nv_bfloat16 h) { return pydl_emu::fp::f32_from(uint32_t(h.__x) << 16); }
inline float __low2float(__nv_bfloat16 h) { return __bfloat162float(h); }

inline __nv_bfloat16::__nv_bfloat16(double d) {
  // as __half(double): round to fp32 to odd (16 bits to spare below bf16's last one)
  float f = static_cast<float>(d);
  if (d == d && static_cast<double>(f) != d && f == f) {
    if ((f > 0 && static_cast<double>(f) > d) || (f < 0 && static_cast<double>(f) < d))
      f = pydl_emu::fp::f32_from(pydl_emu::fp::f32_bits(f) - 1);
    f = pydl_emu::fp::f32_from(pydl_emu::fp::f32_bits(f) | 1u);
  }
  __x = pydl_emu::fp::narrow<8, 7>(f, pydl_emu::fp::kNearestEven, 0x7fff);
}
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }

PYDL_EMU_16BIT_MATH(__nv_bfloat16, __bfloat162float, __float2bfloat16_rn, 0x7f80u)
