// emu_grid_sync.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). grid.sync() (cooperative_groups.h builds on it), the counting block barriers, and __trap.
#pragma once

#include "emu_device_queries.h"

// ---- grid-wide synchronisation (cooperative_groups.h builds on this) --------------------------------------------
namespace pydl_emu {
PYDL_EMU_FN void grid_sync(const char* file, int line) {
  Quiet q;
  if (!g_cooperative) {
    fail("synccheck", "grid.sync() at " + std::string(file) + ":" + std::to_string(line) + " by " +
                          who(g_current) + " in a launch that is not cooperative: only "
                          "cudaLaunchCooperativeKernel guarantees that every block is resident, so on a GPU this "
                          "hangs or is undefined.", cudaErrorLaunchFailure);
  }
  wait(kAtGridBarrier, file, line);
}
PYDL_EMU_FN bool is_cooperative() { return g_cooperative; }
}  // namespace pydl_emu
namespace pydl_emu {
// A barrier that also counts the live threads whose predicate is true; `live` gets how many took part.
PYDL_EMU_FN int barrier_count(int pred, int* live, const char* file, int line) {
  Quiet q;
  Fiber& f = me();
  f.in = pred ? 1 : 0;
  wait(kAtBlockBarrier, file, line);
  const Fiber* fb = g_fibers + g_blocks[g_fibers[g_current].block].first;
  int n = 0, l = 0;
  for (int t = 0; t < g_threads; ++t)
    if (fb[t].state != kDone) {
      ++l;
      n += fb[t].in != 0;
    }
  wait(kAtBlockBarrier, file, line);  // nobody changes `in` before all have counted
  if (live) *live = l;
  return n;
}
}  // namespace pydl_emu
PYDL_EMU_FN int __syncthreads_count(int pred, const char* file, int line) {
  return pydl_emu::barrier_count(pred, nullptr, file, line);
}
PYDL_EMU_FN int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  int live = 0;
  return pydl_emu::barrier_count(pred, &live, file, line) == live;
}
PYDL_EMU_FN int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return pydl_emu::barrier_count(pred, nullptr, file, line) != 0;
}
// A device-side trap or failed assertion ends the kernel with an error, not the host process.
PYDL_EMU_FN void __trap() {
  pydl_emu::Quiet q;
  pydl_emu::fail("trap", "__trap() called by " + pydl_emu::who(pydl_emu::g_current) + ".", cudaErrorLaunchFailure);
}
