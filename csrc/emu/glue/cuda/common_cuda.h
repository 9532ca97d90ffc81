// Stand-in for csrc/cuda/common_cuda.h in the emulated backend (see csrc/emu/cuda_glue.h): the real header,
// with one difference. The glue asks for the SM count of `x.get_device()`, which is -1 for a CPU tensor; on
// the emulated backend every CPU tensor lives on the one emulated device, device 0.
#pragma once

#define cuda_sm_count cuda_sm_count_of_gpu
#include "../../../cuda/common_cuda.h"
#undef cuda_sm_count

namespace pydl {
inline int cuda_sm_count(int device) { return cuda_sm_count_of_gpu(device < 0 ? 0 : device); }
}  // namespace pydl
