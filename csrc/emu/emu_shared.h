// emu_shared.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). __shared__ memory: each block's arena, where the rewrite's shared<T>() / dynamic_shared<T>() find their
// arrays (laid out with red zones between them, filled with 0xFF bytes).
#pragma once

#include "emu_launch.h"

namespace pydl_emu {

// ---- shared memory -------------------------------------------------------------------------------------------
template <typename T>
PYDL_EMU_FN T& shared(long key, const char* name = "__shared__") {
  Quiet q;
  Block& b = my_block();
  auto it = b.shared_at.find(key);
  if (it == b.shared_at.end()) {
    // 128-byte aligned like the device's (the rewrite drops __align__; wide vector and WMMA loads need it)
    const size_t align = alignof(T) > 128 ? alignof(T) : 128;
    const size_t at = (std::max(b.used, b.dyn_bytes) + kRedZone + align - 1) / align * align;
    b.static_bytes += sizeof(T);
    if (b.static_bytes > device().smem_default || at + sizeof(T) + kRedZone > b.arena_size) {
      fail("memcheck", "more than 48 KB of static __shared__ memory in one block (the compiler refuses that on a "
                       "GPU; use dynamic shared memory with the opt-in attribute)", cudaErrorInvalidValue);
    }
    b.used = at + sizeof(T);  // the end of the static arrays so far; the next one starts kRedZone further
    b.names.push_back(name);
    std::fill(b.owner.begin() + long(at), b.owner.begin() + long(at + sizeof(T)), uint16_t(b.names.size()));
    it = b.shared_at.emplace(key, at).first;
  }
  return *reinterpret_cast<T*>(b.arena + it->second);
}
template <typename T>
PYDL_EMU_FN T* dynamic_shared(const char* = "") {
  Quiet q;
  return reinterpret_cast<T*>(my_block().arena);
}

}  // namespace pydl_emu
