// cuda_emu.h -- run CUDA kernel source as plain C++ on the CPU: pydl's one CUDA emulator (docs/ARCHITECTURE.md,
// "The CUDA emulator"). The course's checker and the emulated build of csrc/cuda/*.cu both compile against it.
//
// The execution model:
//   * a launch runs the blocks of its grid in a seeded random order, one block at a time (CUDA promises no
//     order between blocks). A cooperative launch instead makes every block resident at once, as the device
//     must for grid.sync() to work;
//   * the threads of the resident blocks are fibers (ucontext). The scheduler picks a random runnable fiber;
//     it runs until a barrier, a warp primitive, its end -- or a preemption at a memory access (seeded, so
//     a schedule replays exactly: PYDL_EMU_SEED=<the seed a report prints>);
//   * barriers release when every live thread they name has arrived: __syncthreads() (the block),
//     warp primitives (the lanes of the mask), grid.sync() (the whole cooperative grid);
//   * __shared__ arrays live in a per-block arena filled with 0xFF bytes (NaN for float, -1 for int);
//   * device memory is host memory; the device queries answer as an H100 (PYDL_EMU_DEVICE=a100 for an A100).
//
// The checks (each a switch: PYDL_EMU_CHECKS=memcheck,racecheck,initcheck,synccheck, default all) stop the
// kernel at the first finding; the launch then fails like a faulting kernel: cudaGetLastError() returns the
// error and cudaGetErrorString() the report (check, kernel, block, thread, source line, seed).
//   * synccheck (always possible): divergent __syncthreads, warp primitives whose mask names exited lanes or
//     not the caller, lanes of one mask at different primitives, grid.sync() outside a cooperative launch,
//     deadlocks (with where every thread waits);
//   * memcheck, racecheck, initcheck need to see the kernel's loads and stores: compile the kernel's
//     translation unit with `-fsanitize=thread -g` and link WITHOUT libtsan (compile with -c, link without the
//     flag); the __tsan_* hooks GCC/Clang then call before every load and store are the emulator's, defined
//     in one unit of the binary (cuda_emu_hooks.cpp, or any unit with PYDL_EMU_DEFINE_HOOKS). Without the flag
//     those three checks see nothing (pydl_emu::memory_checks_active() says whether any hook fired).
// A finding is a sticky fault until its report is read with cudaGetErrorString (see cudaGetLastError below).
//
// The source rewrite (pydl/_emu.py, line numbers kept) turns the CUDA-only syntax into calls of this header:
//   kernel<<<grid, block[, smem[, stream]]>>>(args)   ->  pydl_emu::Launcher(grid, block, ...).bind(kernel, "kernel")(args)
//     (a kernel template whose arguments the launch deduces: .bind_deduced(<generic lambda calling it>, "kernel"))
//   __shared__ T name[N]...;                           ->  auto& name = pydl_emu::shared<T[N]...>(key, "name");
//   extern __shared__ T name[];                        ->  T* name = pydl_emu::dynamic_shared<T>("name");
//
// Everything the kernel code can call is marked PYDL_EMU_NOSAN: the emulator's own memory traffic must not be
// mistaken for the kernel's. The emulator's state lives in plain globals so that no instrumented library
// function runs on the way from kernel code into it (g_quiet covers what runs after that).
#pragma once
//
// The parts, one idea each and in dependency order (each includes the one before it): the CUDA declarations,
// the emulator's state, reports, the memory checks, the scheduler, launches, shared memory, warp primitives
// and barriers, atomics, math intrinsics, the runtime API, device queries, grid sync, the tsan hooks.
#pragma once

#include "emu_types.h"
#include "emu_state.h"
#include "emu_report.h"
#include "emu_checks.h"
#include "emu_scheduler.h"
#include "emu_launch.h"
#include "emu_shared.h"
#include "emu_warp.h"
#include "emu_atomics.h"
#include "emu_intrinsics.h"
#include "emu_runtime.h"
#include "emu_device_queries.h"
#include "emu_grid_sync.h"
#include "emu_hooks.h"
