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

PYDL_EMU_16BIT_FROM_FLOAT(__nv_bfloat16, bfloat16, 8, 7)
// widening is the 16-bit shift, NaN payloads and all (as CUDA's own header does it)
inline float __bfloat162float(__nv_bfloat16 h) { return pydl_emu::fp::f32_from(uint32_t(h.__x) << 16); }
inline float __low2float(__nv_bfloat16 h) { return __bfloat162float(h); }

// as __half(double): fp32 rounded to odd has 16 bits to spare below bf16's last one
inline __nv_bfloat16::__nv_bfloat16(double d)
    : __x(pydl_emu::fp::narrow<8, 7>(pydl_emu::fp::f32_round_to_odd(d), pydl_emu::fp::kNearestEven, 0x7fff)) {}
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }

PYDL_EMU_16BIT_MATH(__nv_bfloat16, __bfloat162float, __float2bfloat16_rn, 0x7f80u)
