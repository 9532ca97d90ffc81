// The memory-access hooks of the CUDA emulator (see cuda_emu.h, "the memory-access hooks"): link this unit once
// into a binary whose kernel units are compiled with -fsanitize=thread (and without libtsan).
#define PYDL_EMU_DEFINE_HOOKS
#include "cuda_emu.h"
