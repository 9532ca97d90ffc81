// Stand-in for <cuda_runtime.h> in the CPU emulation: everything lives in pydl_cuda_emu.h.
#pragma once
#include "pydl_cuda_emu.h"
