// emu_checks.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). memcheck, racecheck and initcheck: the shadow state of every byte a kernel touches, updated by the
// __tsan_* hooks (emu_hooks.h) at every load and store of the kernel's code.
#pragma once

#include "emu_report.h"

namespace pydl_emu {

// ---- memory access checks (called by the __tsan_* hooks in cuda_emu_hooks.cpp) ------------------------------
inline uintptr_t g_shadow_key = ~uintptr_t(0);  // the last page looked up (most accesses hit it again)
inline Shadow* g_shadow_page = nullptr;
PYDL_EMU_FN Shadow& shadow_of(uintptr_t a) {
  if (a / kPage != g_shadow_key) {
    ShadowPage& p = st().shadow[a / kPage];
    if (!p) p.reset(new Shadow[kPage]);
    g_shadow_key = a / kPage;
    g_shadow_page = p.get();
  }
  return g_shadow_page[a % kPage];
}
PYDL_EMU_FN void forget_shadow(uintptr_t lo, uintptr_t hi) {  // drop the racecheck history of [lo, hi)
  for (uintptr_t k = lo / kPage; k < (hi + kPage - 1) / kPage; ++k) st().shadow.erase(k);
  g_shadow_key = ~uintptr_t(0);
}

PYDL_EMU_FN bool ordered(const Access& p, const Fiber& cur, int cur_index) {
  if (p.fiber < 0) return true;
  if (p.grid != g_grid_gen) return true;  // a grid.sync() (or an earlier launch) separates them
  if (p.block_linear == g_blocks[cur.block].linear) {
    if (p.fiber == cur_index) return true;  // program order
    if (p.bar != g_blocks[cur.block].bar_gen) return true;  // a __syncthreads() separates them
    const Fiber& other = g_fibers[p.fiber];
    if (other.linear / kWarp == cur.linear / kWarp && other.warp_gen != p.warp) return true;  // a warp barrier
  }
  return false;
}

// `region` names the memory for the report: called only when there is one to write.
template <typename R>
PYDL_EMU_FN void race(const char* kind, size_t bytes, const char* space, const R& region,
                      const Access& other, bool other_write, const void* pc, bool write) {
  std::string o = "block " + std::to_string(other.block_linear) + " (linear)";
  if (other.fiber >= 0 && other.fiber < g_nfibers && g_blocks[g_fibers[other.fiber].block].linear == other.block_linear)
    o = who(other.fiber);
  fail("racecheck",
       std::string(kind) + " hazard on " + space + " memory " + region() + ": " + who(g_current) + " " +
           (write ? "writes" : "reads") + " " + std::to_string(bytes) + " byte(s)" + where(pc) + ", and " + o +
           " " + (other_write ? "wrote" : "read") + " the same address" + where(other.pc) + " with no barrier "
           "(__syncthreads / __syncwarp / grid.sync) in between" + (other.atomic ? " (its access was atomic, "
           "this one is not)" : "") + ".",
       cudaErrorLaunchFailure);
}

template <typename R>
PYDL_EMU_FN void race_check(uintptr_t a, size_t n, bool write, bool atomic, const void* pc, const char* space,
                            const R& region) {
  Fiber& f = g_fibers[g_current];
  Access cur;
  cur.fiber = g_current;
  cur.block_linear = int32_t(g_blocks[f.block].linear);
  cur.bar = g_blocks[f.block].bar_gen;
  cur.grid = g_grid_gen;
  cur.warp = f.warp_gen;
  cur.atomic = atomic;
  cur.pc = pc;
  for (size_t i = 0; i < n; ++i) {
    Shadow& sh = shadow_of(a + i);
    if (!ordered(sh.w, f, g_current) && !(sh.w.atomic && atomic))
      race(write ? "write-after-write" : "read-after-write", n, space, region, sh.w, true, pc, write);
    if (write) {
      if (!ordered(sh.r1, f, g_current) && !(sh.r1.atomic && atomic))
        race("write-after-read", n, space, region, sh.r1, false, pc, write);
      if (!ordered(sh.r2, f, g_current) && !(sh.r2.atomic && atomic))
        race("write-after-read", n, space, region, sh.r2, false, pc, write);
      sh.w = cur;
      if (atomic) sh.r1 = sh.r2 = Access();  // an atomic RMW's own read is covered by its write record
    } else {
      if (sh.r1.fiber != g_current || sh.r1.block_linear != cur.block_linear) sh.r2 = sh.r1;
      sh.r1 = cur;
    }
  }
}

PYDL_EMU_FN std::string shared_region(const Block& b, size_t off) {
  const uint16_t o = b.owner[off];
  if (!o) {
    size_t end = off;  // the nearest array before it, to say how far past its end the access is
    while (end > 0 && !b.owner[end - 1]) --end;
    std::string past;
    if (end > 0) {
      size_t start = end - 1;
      while (start > 0 && b.owner[start - 1] == b.owner[end - 1]) --start;
      past = ", " + std::to_string(off - end) + " bytes past the end of `" + b.names[b.owner[end - 1] - 1] + "` (" +
             std::to_string(end - start) + " bytes)";
    }
    return "(offset " + std::to_string(off) + past + ": in no declared __shared__ array)";
  }
  // find where that array starts, to give the element offset
  size_t start = off;
  while (start > 0 && b.owner[start - 1] == o) --start;
  return "`" + b.names[o - 1] + "` (byte " + std::to_string(off - start) + ")";
}

// One load or store of the kernel: `n` bytes at `p`; `pc` is the code address of the access.
PYDL_EMU_FN void on_access_slow(const void* p, size_t n, bool write, bool atomic, const void* pc) {
  const unsigned c = checks();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  Fiber& f = g_fibers[g_current];
  Block& b = g_blocks[f.block];
  const uintptr_t lo = reinterpret_cast<uintptr_t>(b.arena);
  // (1. the thread's own stack was sorted out by on_access.) 2. shared memory of this block
  if (a >= lo && a < lo + b.arena_size) {
    const size_t off = a - lo;
    if (c & kMemcheck) {
      for (size_t i = 0; i < n; ++i)
        if (off + i >= b.arena_size || !b.owner[off + i] || b.owner[off + i] != b.owner[off])
          fail("memcheck", "out-of-bounds " + std::string(write ? "write" : "read") + " of " + std::to_string(n) +
                               " byte(s) in shared memory " + shared_region(b, off + i) + " by " + who(g_current) +
                               where(pc) + ": outside every __shared__ array of the block.",
               cudaErrorIllegalAddress);
    }
    if (c & kRacecheck) race_check(a, n, write, atomic, pc, "shared", [&] { return shared_region(b, off); });
    if (!write && !atomic && (c & kInitcheck)) {
      for (size_t i = 0; i < n && off + i < b.arena_size; ++i)
        if (!b.written[off + i])
          fail("initcheck", "read of uninitialized shared memory " + shared_region(b, off + i) + " by " +
                                who(g_current) + where(pc) + ": no thread of this block wrote it.",
               cudaErrorLaunchFailure);
    }
    if (write || atomic)
      for (size_t i = 0; i < n && off + i < b.arena_size; ++i) b.written[off + i] = 1;
    return;
  }
  State& s = st();
  // 3. device memory handed to the launch (global memory)
  std::pair<const uintptr_t, Range>* hit = g_last_range;
  if (!hit || a < hit->first || a + n > hit->first + hit->second.bytes) {
    hit = nullptr;
    auto it = s.tracked.upper_bound(a);
    if (it != s.tracked.begin()) {
      --it;
      if (a >= it->first && a + n <= it->first + it->second.bytes) hit = g_last_range = &*it;
    }
  }
  if (hit) {
    if (c & kRacecheck)
      race_check(a, n, write, atomic, pc, "global", [&] {
        return "`" + hit->second.name + "` (byte " + std::to_string(a - hit->first) + ")";
      });
    std::vector<unsigned char>& wr = hit->second.written;
    if (!wr.empty()) {
      const size_t off = a - hit->first;
      if (!write || atomic)  // an atomic reads the old value too
        for (size_t i = 0; i < n && (c & kInitcheck); ++i)
          if (!wr[off + i])
            fail("initcheck", "read of uninitialized global memory `" + hit->second.name + "` (byte " +
                                  std::to_string(off + i) + ") by " + who(g_current) + where(pc) +
                                  (atomic ? " (an atomic reads the old value)" : "") + ": nothing wrote it since "
                                  "it was allocated (cudaMalloc does not zero memory; cudaMemset does).",
                 cudaErrorLaunchFailure);
      if (write || atomic) std::fill(wr.begin() + long(off), wr.begin() + long(off + n), 1);
    }
    return;
  }
  if (!(c & kMemcheck)) return;
  // 4. another block's shared memory, another thread's stack: never reachable on a GPU
  for (int i = 0; i < g_nblocks; ++i) {
    const uintptr_t l = reinterpret_cast<uintptr_t>(g_blocks[i].arena);
    if (a >= l && a < l + g_blocks[i].arena_size)
      fail("memcheck", who(g_current) + " accesses the shared memory of block " + dim(g_blocks[i].idx) + where(pc) +
                           ": a block can only reach its own shared memory.", cudaErrorIllegalAddress);
  }
  // 5. static data of a loaded binary (a constant table): fine. Anything else is outside every buffer.
  Dl_info info;
  if (dladdr(p, &info) && info.dli_fname) {
    const uintptr_t sl = reinterpret_cast<uintptr_t>(s.stacks.data());
    if (!(a >= sl && a < sl + s.stacks.size())) return;
  }
  std::string near;
  auto it = s.tracked.upper_bound(a);
  if (it != s.tracked.begin()) {
    auto prev = std::prev(it);
    if (a >= prev->first && a < prev->first + prev->second.bytes + 4096)
      near = " (" + std::to_string(a - prev->first - prev->second.bytes) + " bytes past the end of `" +
             prev->second.name + "`, " + std::to_string(prev->second.bytes) + " bytes)";
  }
  if (near.empty() && it != s.tracked.end() && it->first > a && it->first - a <= 4096)
    near = " (" + std::to_string(it->first - a) + " bytes before the start of `" + it->second.name + "`)";
  fail("memcheck", "out-of-bounds global " + std::string(write ? "write" : "read") + " of " + std::to_string(n) +
                       " byte(s) at " + hex_addr(a) + near + " by " + who(g_current) + where(pc) +
                       ": the address is in no buffer handed to the kernel" +
                       (s.tracked.empty() ? " (none is registered: cudaMalloc or pydl_emu::track register them)" : "") +
                       ".", cudaErrorIllegalAddress);
}

PYDL_EMU_FN void preempt();
PYDL_EMU_FN void on_access(const void* p, size_t n, bool write, const void* pc) {
  if (g_current < 0 || g_quiet || g_in_hook || g_abort) return;
  // the thread's own stack (its locals, all of them in memory at -O0): private, not checked, no preemption
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(g_fibers[g_current].stack_lo);
  if (a - lo < kStack) return;
  g_in_hook = true;
  g_hooks_seen = true;
  ++g_quiet;
  if (checks() & (kMemcheck | kRacecheck | kInitcheck)) on_access_slow(p, n, write, false, pc);
  --g_quiet;
  g_in_hook = false;
  if (g_preempt && next_random() % g_preempt == 0) preempt();
}
// An atomic read-modify-write of the emulator's atomics, recorded as such.
PYDL_EMU_FN void on_atomic(const void* p, size_t n, const void* pc) {
  if (g_current < 0 || g_quiet || g_in_hook || g_abort) return;
  if (g_preempt && next_random() % g_preempt == 0) preempt();  // interleave around atomics too
  g_in_hook = true;
  ++g_quiet;
  if (checks() & (kMemcheck | kRacecheck | kInitcheck)) on_access_slow(p, n, true, true, pc);
  --g_quiet;
  g_in_hook = false;
}

}  // namespace pydl_emu
