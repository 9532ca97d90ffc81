// emu_atomics.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). Atomics: atomic by construction (a fiber is never switched out inside one); racecheck records them as
// atomic accesses, which do not race with each other.
#pragma once

#include "emu_warp.h"

// ---- atomics ---------------------------------------------------------------------------------------------------
// Atomic by construction (a fiber is never switched out inside one); racecheck records them as atomic accesses.
// The value's type is the pointee's (not deduced from `v`), so atomicAdd(&unsigned_counter, 1) converts 1 as
// CUDA's overloads do. The integer-only operations refuse floating-point types as nvcc does.
namespace pydl_emu {
template <typename T>
struct ident {
  using type = T;
};
template <typename T>
constexpr bool kAtomicType = std::is_same<T, int>::value || std::is_same<T, unsigned>::value ||
                             std::is_same<T, unsigned long long>::value || std::is_same<T, long long>::value ||
                             std::is_same<T, float>::value || std::is_same<T, double>::value;
}  // namespace pydl_emu
#define PYDL_EMU_ATOMIC(NAME, INTEGER_ONLY, EXPR)                                                            \
  template <typename T>                                                                                      \
  PYDL_EMU_FN T NAME(T* p, typename pydl_emu::ident<T>::type v) {                                            \
    static_assert(pydl_emu::kAtomicType<T> || !INTEGER_ONLY, #NAME ": unsupported type");                   \
    static_assert(!INTEGER_ONLY || std::is_integral<T>::value, #NAME " exists for integer types only");       \
    pydl_emu::on_atomic(p, sizeof(T), __builtin_return_address(0));                                          \
    const T old = *p;                                                                                        \
    *p = (EXPR);                                                                                             \
    return old;                                                                                              \
  }
PYDL_EMU_ATOMIC(atomicAdd, false, T(old + v))
PYDL_EMU_ATOMIC(atomicSub, true, T(old - v))
PYDL_EMU_ATOMIC(atomicExch, false, v)
PYDL_EMU_ATOMIC(atomicMax, true, old > v ? old : v)
PYDL_EMU_ATOMIC(atomicMin, true, old < v ? old : v)
PYDL_EMU_ATOMIC(atomicAnd, true, T(old & v))
PYDL_EMU_ATOMIC(atomicOr, true, T(old | v))
PYDL_EMU_ATOMIC(atomicXor, true, T(old ^ v))
#undef PYDL_EMU_ATOMIC
PYDL_EMU_FN unsigned atomicInc(unsigned* p, unsigned v) {
  pydl_emu::on_atomic(p, sizeof(unsigned), __builtin_return_address(0));
  const unsigned old = *p;
  *p = old >= v ? 0u : old + 1u;
  return old;
}
PYDL_EMU_FN unsigned atomicDec(unsigned* p, unsigned v) {
  pydl_emu::on_atomic(p, sizeof(unsigned), __builtin_return_address(0));
  const unsigned old = *p;
  *p = (old == 0u || old > v) ? v : old - 1u;
  return old;
}
template <typename T>
PYDL_EMU_FN T atomicCAS(T* p, typename pydl_emu::ident<T>::type cmp, typename pydl_emu::ident<T>::type v) {
  static_assert(std::is_integral<T>::value, "atomicCAS exists for integer types only");
  pydl_emu::on_atomic(p, sizeof(T), __builtin_return_address(0));
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}
