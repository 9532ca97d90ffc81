// emu_warp.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). What a kernel's threads call to meet: the built-in variables, __syncthreads, and the warp primitives
// (which wait for every lane their mask names, then compute from those lanes only).
#pragma once

#include "emu_shared.h"

namespace pydl_emu {

// ---- warp primitives -----------------------------------------------------------------------------------------
template <typename T>
PYDL_EMU_FN uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "a warp primitive on a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
PYDL_EMU_FN T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
PYDL_EMU_FN int lane() { return me().linear % kWarp; }
// Deposit this lane's operand, wait for the lanes of `mask`, return what the release computed for this lane.
PYDL_EMU_FN uint64_t warp_op(unsigned mask, int op, uint64_t in, int src, const char* file, int line) {
  Quiet q;
  Fiber& f = me();
  f.mask = mask;
  f.op = op;
  f.in = in;
  f.src = src;
  wait(kAtWarpBarrier, file, line);
  return g_fibers[g_current].out;
}

}  // namespace pydl_emu

// ---- built-in variables (by value: the kernel's reads of them are not memory accesses of the kernel) ---------
namespace pydl_emu {
PYDL_EMU_FN uint3 thread_idx() { return g_fibers[g_current].tid; }
PYDL_EMU_FN uint3 block_idx() { return g_blocks[g_fibers[g_current].block].idx; }
PYDL_EMU_FN dim3 block_dim() { return g_block; }
PYDL_EMU_FN dim3 grid_dim() { return g_grid; }
}  // namespace pydl_emu
#define threadIdx (pydl_emu::thread_idx())
#define blockIdx (pydl_emu::block_idx())
#define blockDim (pydl_emu::block_dim())
#define gridDim (pydl_emu::grid_dim())
constexpr int warpSize = 32;

// ---- synchronisation ------------------------------------------------------------------------------------------
// The call site (file:line of the caller) comes from default arguments, so deadlock and synccheck reports can
// say where each thread waits.
PYDL_EMU_FN void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  pydl_emu::Quiet q;
  pydl_emu::wait(pydl_emu::kAtBlockBarrier, file, line);
}
PYDL_EMU_FN int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE());
PYDL_EMU_FN void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
  pydl_emu::warp_op(mask, pydl_emu::kOpSync, 0, 0, file, line);
}
PYDL_EMU_FN void __threadfence() {}
PYDL_EMU_FN void __threadfence_block() {}
PYDL_EMU_FN void __threadfence_system() {}

// ---- warp primitives ------------------------------------------------------------------------------------------
template <typename T>
PYDL_EMU_FN T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = (l & ~(width - 1)) + (src & (width - 1));
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), s, file, line));
}
template <typename T>
PYDL_EMU_FN T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = (l & (width - 1)) >= int(delta) ? l - int(delta) : l;
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), s, file, line));
}
template <typename T>
PYDL_EMU_FN T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                               const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = (l & (width - 1)) + int(delta) < width ? l + int(delta) : l;
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), s, file, line));
}
template <typename T>
PYDL_EMU_FN T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = l ^ lane_mask;
  // lanes may read from earlier width-groups but not later ones (they get their own value), as CUDA specifies
  const int r = s >= (l & ~(width - 1)) + width ? l : s;
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), r, file, line));
}
PYDL_EMU_FN unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
  return unsigned(pydl_emu::warp_op(mask, pydl_emu::kOpBallot, pred ? 1 : 0, 0, file, line));
}
PYDL_EMU_FN int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return __ballot_sync(mask, pred, file, line) != 0;
}
PYDL_EMU_FN int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return __ballot_sync(mask, !pred, file, line) == 0;
}
PYDL_EMU_FN int __uni_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const unsigned b = __ballot_sync(mask, pred, file, line);
  return b == 0 || b == mask;
}
template <typename T>
PYDL_EMU_FN unsigned __match_any_sync(unsigned mask, T v, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
  return unsigned(pydl_emu::warp_op(mask, pydl_emu::kOpMatchAny, pydl_emu::to_bits(v), 0, file, line));
}
template <typename T>
PYDL_EMU_FN unsigned __match_all_sync(unsigned mask, T v, int* pred, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
  const uint64_t r = pydl_emu::warp_op(mask, pydl_emu::kOpMatchAll, pydl_emu::to_bits(v), 0, file, line);
  *pred = int(r >> 32);
  return unsigned(r);
}
#define PYDL_EMU_REDUCE(NAME, OP, T, SIGNED)                                                                    \
  PYDL_EMU_FN T NAME(unsigned mask, T v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) { \
    return T(uint32_t(pydl_emu::warp_op(mask, pydl_emu::OP, uint32_t(v), SIGNED, file, line)));              \
  }
PYDL_EMU_REDUCE(__reduce_add_sync, kOpReduceAdd, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_add_sync, kOpReduceAdd, int, 1)
PYDL_EMU_REDUCE(__reduce_min_sync, kOpReduceMin, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_min_sync, kOpReduceMin, int, 1)
PYDL_EMU_REDUCE(__reduce_max_sync, kOpReduceMax, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_max_sync, kOpReduceMax, int, 1)
PYDL_EMU_REDUCE(__reduce_and_sync, kOpReduceAnd, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_or_sync, kOpReduceOr, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_xor_sync, kOpReduceXor, unsigned, 0)
#undef PYDL_EMU_REDUCE
// The lanes of the warp that execute this __activemask() together. The emulator has no program counter per
// warp, so it lets every lane of the warp run until it is blocked (here, at another primitive or barrier, or
// exited); the lanes waiting here then form the "converged" set -- the lanes of the other side of a branch
// are not in it, as on a GPU.
PYDL_EMU_FN unsigned __activemask(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return unsigned(pydl_emu::warp_op(0, pydl_emu::kOpActive, 0, 0, file, line));
}
PYDL_EMU_FN int __syncthreads_count(int pred, const char* file, int line);
