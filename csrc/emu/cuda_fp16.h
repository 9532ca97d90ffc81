// Stand-in for CUDA's <cuda_fp16.h> in the CPU emulation: the __half type, its conversion intrinsics and
// operators, bit-exact with the device.
//
// Why the conversions are written with integer operations rather than a cast: the host compiler's own
// _Float16 (where it has one) follows the host's rounding mode and its own NaN rules; the device's cvt
// instructions always round as the intrinsic's suffix says (_rn to nearest even, _rz toward zero, _rd down,
// _ru up), keep subnormals, and turn any NaN into the canonical NaN 0x7fff. Doing it by hand on the bits gives
// exactly that on every host, and makes the rounding rule visible: that is what a learner should see.
//
// Arithmetic (+ - * / on __half) is done in fp32 and rounded once to fp16. That is *exactly* the correctly
// rounded fp16 result, as the device's half instructions give: fp32 has 24 significant bits, at least
// 2 * 11 + 2, and with that much headroom rounding twice (to fp32, then to fp16) cannot differ from rounding
// once for +, -, *, / (the double-rounding bound of Figueroa, 1995).
//
// Not here: the paired type __half2 and its vector intrinsics (pydl's kernels do not use them).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pydl_emu {
namespace fp {

enum Round : int { kNearestEven = 0, kTowardZero = 1, kDown = 2, kUp = 3 };

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Whether dropping the remainder `rem` (out of `half_ulp * 2`, the unit of the kept last bit) must instead
// round the kept magnitude `kept` up by one ulp, for a value of sign `neg`. The magnitude is rounded, so
// "toward +inf" rounds a negative value's magnitude down.
inline bool round_up(Round mode, uint32_t kept, uint64_t rem, uint64_t half_ulp, bool neg) {
  if (rem == 0) return false;  // exact: every mode agrees
  switch (mode) {
    case kNearestEven: return rem > half_ulp || (rem == half_ulp && (kept & 1u));
    case kTowardZero: return false;
    case kDown: return neg;
    case kUp: return !neg;
  }
  return false;
}

// fp32 -> a float format with 1 sign, `EXP` exponent and `MAN` mantissa bits (fp16: 5, 10), correctly
// rounded in `mode`; NaN -> `canonical_nan`.
template <int EXP, int MAN>
inline uint16_t narrow(float x, Round mode, uint16_t canonical_nan) {
  const uint32_t u = f32_bits(x);
  const bool neg = u >> 31;
  const uint16_t sign = uint16_t(neg) << 15;
  const uint32_t a = u & 0x7fffffffu;
  constexpr int kBias = (1 << (EXP - 1)) - 1;
  constexpr uint32_t kInf = ((1u << EXP) - 1) << MAN;
  if (a > 0x7f800000u) return canonical_nan;
  if (a == 0x7f800000u) return uint16_t(sign | kInf);
  // x = M * 2^(e - 23), M with its implicit leading bit (fp32 subnormals: e = -126, no leading bit)
  int e = int(a >> 23) - 127;
  uint64_t M = a & 0x7fffffu;
  if (e == -127) e = -126;
  else M |= 0x800000u;
  if (e > kBias) {  // beyond the largest finite exponent: infinity or the largest finite, by direction
    const bool to_inf = mode == kNearestEven || (mode == kUp && !neg) || (mode == kDown && neg);
    return uint16_t(sign | (to_inf ? kInf : kInf - 1));
  }
  // keep MAN fraction bits of a normal result (biased exponent >= 1), or fewer for a subnormal one, whose
  // unit is 2^(1 - bias - MAN)
  const int emin = 1 - kBias;
  const int shift = (23 - MAN) + (e < emin ? emin - e : 0);
  uint32_t kept;
  uint64_t rem, half_ulp;
  if (shift >= 40) {  // far below the smallest subnormal: only "is it nonzero" is left of it
    kept = 0;
    rem = M ? 1 : 0;
    half_ulp = uint64_t(1) << 39;
  } else {
    kept = uint32_t(M >> shift);
    rem = M & ((uint64_t(1) << shift) - 1);
    half_ulp = uint64_t(1) << (shift - 1);
  }
  // A normal result's bits are (biased exponent << MAN) + fraction = that plus the implicit bit's carry:
  // adding the exponent field *after* dropping the implicit bit lets a rounding carry ripple into the
  // exponent, and from the largest finite value into infinity, as IEEE rounding requires.
  uint32_t bits = e < emin ? kept : (uint32_t(e + kBias) << MAN) + (kept - (1u << MAN));
  if (round_up(mode, kept, rem, half_ulp, neg)) ++bits;
  return uint16_t(sign | bits);
}

// a + b rounded to odd (to the double with an odd last bit when inexact). Rounding that once more to a
// format at least two bits narrower gives the correctly rounded a + b (Boldo & Melquiond, 2008): this is
// how an fma's single rounding is had from double arithmetic. TwoSum recovers the exact error of a + b.
inline double sum_round_to_odd(double a, double b) {
  const double s = a + b, bb = s - a, err = (a - (s - bb)) + (b - bb);
  uint64_t u;
  std::memcpy(&u, &s, 8);
  if (err != 0 && !(u & 1u)) return std::nextafter(s, err > 0 ? HUGE_VAL : -HUGE_VAL);
  return s;
}

// d rounded to fp32 *to odd*: toward zero, then the last bit set if anything was dropped (a sticky bit). fp32
// keeps at least 13 bits below a 16-bit format's last one, so that bit decides ties exactly as the unrounded
// double would, and a round-to-nearest narrowing of the result is correct for d itself (no double rounding).
// The double -> __half / __nv_bfloat16 conversions go through it.
inline float f32_round_to_odd(double d) {
  float f = static_cast<float>(d);
  if (d == d && static_cast<double>(f) != d && f == f) {
    // the cast rounded to nearest: step toward zero if it went outward, then mark inexactness
    if ((f > 0 && static_cast<double>(f) > d) || (f < 0 && static_cast<double>(f) < d)) f = f32_from(f32_bits(f) - 1);
    f = f32_from(f32_bits(f) | 1u);
  }
  return f;
}

// A float format of 16 bits -> fp32: exact (every fp16 and bf16 value is an fp32 value).
template <int EXP, int MAN>
inline float widen(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31;
  const int E = (h >> MAN) & ((1 << EXP) - 1);
  uint32_t m = h & ((1u << MAN) - 1);
  constexpr int kBias = (1 << (EXP - 1)) - 1;
  if (E == (1 << EXP) - 1) return f32_from(sign | 0x7f800000u | (m << (23 - MAN)) | (m ? 0x400000u : 0));
  if (E == 0) {
    if (m == 0) return f32_from(sign);
    int e = 1 - kBias;  // subnormal: normalise the mantissa into fp32's (fp32's range holds every one)
    while (!(m & (1u << MAN))) {
      m <<= 1;
      --e;
    }
    return f32_from(sign | uint32_t(e + 127) << 23 | (m & ((1u << MAN) - 1)) << (23 - MAN));
  }
  return f32_from(sign | uint32_t(E - kBias + 127) << 23 | m << (23 - MAN));
}

}  // namespace fp
}  // namespace pydl_emu

struct __half_raw {
  unsigned short x;
};

struct __half {
  using raw_type = __half_raw;
  unsigned short __x;  // the bits, as in CUDA's own header (code that pokes at them keeps working)

  __half() = default;
  __half(const __half_raw& r) : __x(r.x) {}
  // Implicit conversions round to nearest even, as CUDA's constructors do.
  __half(float f) : __x(pydl_emu::fp::narrow<5, 10>(f, pydl_emu::fp::kNearestEven, 0x7fff)) {}
  // double -> fp16 directly (not through fp32, whose rounding could double-round a tie)
  __half(double d);
  __half(int i) : __half(double(i)) {}
  __half(unsigned i) : __half(double(i)) {}
  __half(long long i) : __half(double(i)) {}
  __half(unsigned long long i) : __half(double(i)) {}
  operator float() const { return pydl_emu::fp::widen<5, 10>(__x); }
  operator __half_raw() const { return __half_raw{__x}; }
};
typedef __half half;

inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short s) { return __half_raw{static_cast<unsigned short>(s)}; }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }

// fp32 -> T in each of the device's rounding modes (the suffix), for __half and __nv_bfloat16 (cuda_bf16.h):
// __float2<NAME>_rn / _rz / _rd / _ru, and __float2<NAME> (to nearest). EXP, MAN: T's exponent and mantissa bits.
#define PYDL_EMU_16BIT_FROM_FLOAT(T, NAME, EXP, MAN)                                                              \
  inline T __float2##NAME##_rn(float f) {                                                                         \
    return T::raw_type{pydl_emu::fp::narrow<EXP, MAN>(f, pydl_emu::fp::kNearestEven, 0x7fff)};                    \
  }                                                                                                               \
  inline T __float2##NAME(float f) { return __float2##NAME##_rn(f); }                                             \
  inline T __float2##NAME##_rz(float f) {                                                                         \
    return T::raw_type{pydl_emu::fp::narrow<EXP, MAN>(f, pydl_emu::fp::kTowardZero, 0x7fff)};                     \
  }                                                                                                               \
  inline T __float2##NAME##_rd(float f) {                                                                         \
    return T::raw_type{pydl_emu::fp::narrow<EXP, MAN>(f, pydl_emu::fp::kDown, 0x7fff)};                           \
  }                                                                                                               \
  inline T __float2##NAME##_ru(float f) {                                                                         \
    return T::raw_type{pydl_emu::fp::narrow<EXP, MAN>(f, pydl_emu::fp::kUp, 0x7fff)};                             \
  }

PYDL_EMU_16BIT_FROM_FLOAT(__half, half, 5, 10)
inline float __half2float(__half h) { return pydl_emu::fp::widen<5, 10>(h.__x); }
inline float __low2float(__half h) { return __half2float(h); }

// double -> fp16 through fp32 rounded to odd (f32_round_to_odd): one correct rounding of d
inline __half::__half(double d)
    : __x(pydl_emu::fp::narrow<5, 10>(pydl_emu::fp::f32_round_to_odd(d), pydl_emu::fp::kNearestEven, 0x7fff)) {}
inline __half __double2half(double d) { return __half(d); }

inline __half __int2half_rn(int i) { return __half(i); }
inline int __half2int_rz(__half h) { return static_cast<int>(__half2float(h)); }

// ---- arithmetic, comparisons, operators: the same set for __half and __nv_bfloat16 (cuda_bf16.h) --------------
// Computed in fp32 and rounded once (exact: see the top of this file). T: the type; TO_F / FROM_F: its exact
// widening and round-to-nearest narrowing; INF: the bits of +infinity (a larger magnitude is a NaN).
// __hfma(a, b, c) rounds once too: the product of two 16-bit values is exact in double (at most 22 bits),
// the sum is rounded to odd, and the conversion below (itself a round-to-odd to fp32, then to nearest) is
// then correct for the exact a * b + c. __hmax/__hmin: a NaN operand loses to a number (IEEE maxNum), two
// NaNs give the canonical NaN.
#define PYDL_EMU_16BIT_MATH(T, TO_F, FROM_F, INF)                                                                  \
  inline T __hadd(T a, T b) { return FROM_F(TO_F(a) + TO_F(b)); }                                                 \
  inline T __hsub(T a, T b) { return FROM_F(TO_F(a) - TO_F(b)); }                                                 \
  inline T __hmul(T a, T b) { return FROM_F(TO_F(a) * TO_F(b)); }                                                 \
  inline T __hdiv(T a, T b) { return FROM_F(TO_F(a) / TO_F(b)); }                                                 \
  inline T __hfma(T a, T b, T c) {                                                                                \
    return T(pydl_emu::fp::sum_round_to_odd(double(TO_F(a)) * double(TO_F(b)), double(TO_F(c))));                \
  }                                                                                                               \
  inline T __hneg(T a) { return T::raw_type{static_cast<unsigned short>(a.__x ^ 0x8000u)}; }                       \
  inline T __habs(T a) { return T::raw_type{static_cast<unsigned short>(a.__x & 0x7fffu)}; }                       \
  inline bool __hisnan(T a) { return (a.__x & 0x7fffu) > (INF); }                                                 \
  inline int __hisinf(T a) { return (a.__x & 0x7fffu) == (INF) ? ((a.__x >> 15) ? -1 : 1) : 0; }                  \
  inline bool __heq(T a, T b) { return TO_F(a) == TO_F(b); }                                                      \
  inline bool __hne(T a, T b) { return TO_F(a) != TO_F(b); }                                                      \
  inline bool __hlt(T a, T b) { return TO_F(a) < TO_F(b); }                                                       \
  inline bool __hle(T a, T b) { return TO_F(a) <= TO_F(b); }                                                      \
  inline bool __hgt(T a, T b) { return TO_F(a) > TO_F(b); }                                                       \
  inline bool __hge(T a, T b) { return TO_F(a) >= TO_F(b); }                                                      \
  inline T __hmax(T a, T b) {                                                                                     \
    if (__hisnan(a)) return __hisnan(b) ? T(T::raw_type{0x7fff}) : b;                                             \
    return __hisnan(b) || __hgt(a, b) ? a : b;                                                                    \
  }                                                                                                               \
  inline T __hmin(T a, T b) {                                                                                     \
    if (__hisnan(a)) return __hisnan(b) ? T(T::raw_type{0x7fff}) : b;                                             \
    return __hisnan(b) || __hlt(a, b) ? a : b;                                                                    \
  }                                                                                                               \
  inline T operator+(T a, T b) { return __hadd(a, b); }                                                           \
  inline T operator-(T a, T b) { return __hsub(a, b); }                                                           \
  inline T operator*(T a, T b) { return __hmul(a, b); }                                                           \
  inline T operator/(T a, T b) { return __hdiv(a, b); }                                                           \
  inline T operator-(T a) { return __hneg(a); }                                                                   \
  inline T operator+(T a) { return a; }                                                                           \
  inline T& operator+=(T& a, T b) { return a = __hadd(a, b); }                                                    \
  inline T& operator-=(T& a, T b) { return a = __hsub(a, b); }                                                    \
  inline T& operator*=(T& a, T b) { return a = __hmul(a, b); }                                                    \
  inline T& operator/=(T& a, T b) { return a = __hdiv(a, b); }                                                    \
  inline bool operator==(T a, T b) { return __heq(a, b); }                                                        \
  inline bool operator!=(T a, T b) { return __hne(a, b); }                                                        \
  inline bool operator<(T a, T b) { return __hlt(a, b); }                                                         \
  inline bool operator<=(T a, T b) { return __hle(a, b); }                                                        \
  inline bool operator>(T a, T b) { return __hgt(a, b); }                                                         \
  inline bool operator>=(T a, T b) { return __hge(a, b); }

PYDL_EMU_16BIT_MATH(__half, __half2float, __float2half_rn, 0x7c00u)
