// Stand-in for <cooperative_groups.h> in the CPU emulation: the groups pydl's kernels use.
// grid.sync() works only inside cudaLaunchCooperativeKernel, where the emulator makes every block resident at
// once (and refuses a grid larger than the emulated device holds, as the driver does); anywhere else synccheck
// reports it, since on a GPU it would hang or be undefined.
#pragma once
#include "cuda_emu.h"

namespace cooperative_groups {

class thread_block {
 public:
  PYDL_EMU_NOSAN void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    __syncthreads(file, line);
  }
  PYDL_EMU_NOSAN unsigned long long thread_rank() const {
    const uint3 t = threadIdx;
    const dim3 b = blockDim;
    return (unsigned long long)t.x + (unsigned long long)b.x * (t.y + (unsigned long long)b.y * t.z);
  }
  PYDL_EMU_NOSAN unsigned long long size() const {
    const dim3 b = blockDim;
    return (unsigned long long)b.x * b.y * b.z;
  }
  PYDL_EMU_NOSAN uint3 group_index() const { return blockIdx; }
  PYDL_EMU_NOSAN uint3 thread_index() const { return threadIdx; }
};

class grid_group {
 public:
  PYDL_EMU_NOSAN void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    pydl_emu::grid_sync(file, line);
  }
  PYDL_EMU_NOSAN bool is_valid() const { return pydl_emu::is_cooperative(); }
  PYDL_EMU_NOSAN unsigned long long size() const {
    const dim3 g = gridDim, b = blockDim;
    return (unsigned long long)g.x * g.y * g.z * b.x * b.y * b.z;
  }
  PYDL_EMU_NOSAN unsigned long long thread_rank() const {
    const uint3 bi = blockIdx;
    const dim3 g = gridDim;
    const unsigned long long block = bi.x + (unsigned long long)g.x * (bi.y + (unsigned long long)g.y * bi.z);
    return block * thread_block().size() + thread_block().thread_rank();
  }
};

PYDL_EMU_FN grid_group this_grid() { return grid_group(); }
PYDL_EMU_FN thread_block this_thread_block() { return thread_block(); }
PYDL_EMU_FN void sync(const grid_group& g, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  g.sync(file, line);
}
PYDL_EMU_FN void sync(const thread_block& b, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  b.sync(file, line);
}

}  // namespace cooperative_groups
