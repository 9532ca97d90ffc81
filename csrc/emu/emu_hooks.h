// emu_hooks.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). The memory-access hooks, defined in exactly one translation unit (PYDL_EMU_DEFINE_HOOKS).
#pragma once

#include "emu_grid_sync.h"

// ---- the memory-access hooks -----------------------------------------------------------------------------------
// GCC and Clang, given -fsanitize=thread, call these before every load and store of the instrumented code; the
// emulator defines them instead of linking the ThreadSanitizer runtime. Exactly one translation unit of a binary
// defines PYDL_EMU_DEFINE_HOOKS before including this header (cuda_emu_hooks.cpp does; the course's checker
// defines it in the learner's unit). The hooks themselves are never instrumented (PYDL_EMU_NOSAN).
#ifdef PYDL_EMU_DEFINE_HOOKS
#define PYDL_EMU_HOOK extern "C" PYDL_EMU_NOSAN __attribute__((used))
#define PYDL_EMU_RW(N)                                                                                           \
  PYDL_EMU_HOOK void __tsan_read##N(void* p) { pydl_emu::on_access(p, N, false, __builtin_return_address(0)); }   \
  PYDL_EMU_HOOK void __tsan_write##N(void* p) { pydl_emu::on_access(p, N, true, __builtin_return_address(0)); }   \
  PYDL_EMU_HOOK void __tsan_unaligned_read##N(void* p) {                                                         \
    pydl_emu::on_access(p, N, false, __builtin_return_address(0));                                                \
  }                                                                                                              \
  PYDL_EMU_HOOK void __tsan_unaligned_write##N(void* p) {                                                        \
    pydl_emu::on_access(p, N, true, __builtin_return_address(0));                                                 \
  }                                                                                                              \
  PYDL_EMU_HOOK void __tsan_volatile_read##N(void* p) {                                                          \
    pydl_emu::on_access(p, N, false, __builtin_return_address(0));                                                \
  }                                                                                                              \
  PYDL_EMU_HOOK void __tsan_volatile_write##N(void* p) {                                                         \
    pydl_emu::on_access(p, N, true, __builtin_return_address(0));                                                 \
  }
PYDL_EMU_RW(1)
PYDL_EMU_RW(2)
PYDL_EMU_RW(4)
PYDL_EMU_RW(8)
PYDL_EMU_RW(16)
#undef PYDL_EMU_RW
PYDL_EMU_HOOK void __tsan_read_range(void* p, unsigned long n) {
  pydl_emu::on_access(p, n, false, __builtin_return_address(0));
}
PYDL_EMU_HOOK void __tsan_write_range(void* p, unsigned long n) {
  pydl_emu::on_access(p, n, true, __builtin_return_address(0));
}
// Clang turns memcpy/memset/memmove in instrumented code into these: check both ranges, then do it.
PYDL_EMU_HOOK void* __tsan_memcpy(void* d, const void* s, unsigned long n) {
  pydl_emu::on_access(s, n, false, __builtin_return_address(0));
  pydl_emu::on_access(d, n, true, __builtin_return_address(0));
  return std::memcpy(d, s, n);
}
PYDL_EMU_HOOK void* __tsan_memmove(void* d, const void* s, unsigned long n) {
  pydl_emu::on_access(s, n, false, __builtin_return_address(0));
  pydl_emu::on_access(d, n, true, __builtin_return_address(0));
  return std::memmove(d, s, n);
}
PYDL_EMU_HOOK void* __tsan_memset(void* d, int v, unsigned long n) {
  pydl_emu::on_access(d, n, true, __builtin_return_address(0));
  return std::memset(d, v, n);
}
PYDL_EMU_HOOK void __tsan_func_entry(void*) {}
PYDL_EMU_HOOK void __tsan_func_exit() {}
PYDL_EMU_HOOK void __tsan_init() {}
PYDL_EMU_HOOK void __tsan_vptr_update(void** p, void*) { pydl_emu::on_access(p, sizeof(void*), true, __builtin_return_address(0)); }
PYDL_EMU_HOOK void __tsan_vptr_read(void** p) { pydl_emu::on_access(p, sizeof(void*), false, __builtin_return_address(0)); }
// std::atomic and static-local guards in instrumented code become these: do the operation (the fibers of the
// emulator never run in parallel, so sequential consistency is trivially kept).
#define PYDL_EMU_TSAN_ATOMIC(N, T)                                                                               \
  PYDL_EMU_HOOK T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  PYDL_EMU_HOOK void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  PYDL_EMU_HOOK T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                          \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                          \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                             \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                        \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  PYDL_EMU_HOOK int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {              \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                       \
  }                                                                                                              \
  PYDL_EMU_HOOK int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                    \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                             \
    return c;                                                                                                    \
  }
PYDL_EMU_TSAN_ATOMIC(8, unsigned char)
PYDL_EMU_TSAN_ATOMIC(16, unsigned short)
PYDL_EMU_TSAN_ATOMIC(32, unsigned int)
PYDL_EMU_TSAN_ATOMIC(64, unsigned long long)
#undef PYDL_EMU_TSAN_ATOMIC
PYDL_EMU_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
PYDL_EMU_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#undef PYDL_EMU_HOOK
#endif  // PYDL_EMU_DEFINE_HOOKS
