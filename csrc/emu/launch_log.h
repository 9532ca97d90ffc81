// Which kernels the emulated backend has launched: the coverage test (tests/test_cuda_emu.py) reads this log
// to prove that every __global__ function of csrc/cuda, in fp32 and a 16-bit type, really ran.
//
// Included by the emulated build (pydl/_build.py) into each kernel translation unit after the emulator and
// before the kernels' rewritten source. A kernel is recorded by its address: a kernel template's
// instantiations are distinct functions, so `act_stats_partial<float>` and `act_stats_partial<__half>` are
// told apart, and the test names each address from the library's symbol table (`nm`), where the compiler
// wrote the full template arguments. Only launches the emulator accepted count: a launch it refused (a grid
// too big for a cooperative launch, too much shared memory) did not run the kernel.
#pragma once

#include <dlfcn.h>

#include <cstdio>
#include <map>
#include <string>

namespace pydl_emu {

// One log for the whole process (an inline function's static is a single object across the libraries).
inline std::map<const void*, unsigned long long>& launch_log() {
  static std::map<const void*, unsigned long long> log;
  return log;
}

PYDL_EMU_FN cudaError_t record_if_ok(const void* kernel, cudaError_t err) {
  if (err == cudaSuccess) ++launch_log()[kernel];
  return err;
}

// The rewrite turns `k<<<grid, block, smem, stream>>>(args)` into `pydl_emu::Launcher(...).bind(k, "k")(args)`;
// the macro below makes that a LoggingLauncher, which launches exactly as Launcher does, then records.
struct LoggingLauncher : Launcher {
  using Launcher::Launcher;
  template <typename... A>
  PYDL_EMU_NOSAN auto bind(void (*kernel)(A...), const char* name = "") {
    auto launch = Launcher::bind(kernel, name);
    const void* key = reinterpret_cast<const void*>(kernel);
    return [launch, key](auto... args) PYDL_EMU_NOSAN {
      // a launch reports failure through the sticky last error; one already pending is not this launch's
      const bool clean_before = cudaPeekAtLastError() == cudaSuccess;
      launch(args...);
      if (clean_before) record_if_ok(key, cudaPeekAtLastError());
    };
  }
};

}  // namespace pydl_emu

#define Launcher LoggingLauncher
#define cudaLaunchCooperativeKernel(kernel, ...) \
  pydl_emu::record_if_ok(reinterpret_cast<const void*>(kernel), cudaLaunchCooperativeKernel(kernel, __VA_ARGS__))

// "library path \t offset of the kernel in it \t launches" per line, for every kernel launched in this process
// (offsets, not addresses: `nm` lists symbols by their offset in the file).
extern "C" __attribute__((visibility("default"))) const char* pydl_emu_launch_log() {
  static std::string out;
  out.clear();
  for (const auto& kv : pydl_emu::launch_log()) {
    Dl_info info;
    if (!dladdr(kv.first, &info) || !info.dli_fname) continue;
    char line[64];
    std::snprintf(line, sizeof line, "\t%zx\t%llu\n",
                  size_t(static_cast<const char*>(kv.first) - static_cast<const char*>(info.dli_fbase)), kv.second);
    out += info.dli_fname;
    out += line;
  }
  return out.c_str();
}

// Whether the kernels' loads and stores reached the emulator (the translation unit was instrumented): without
// that, memcheck, racecheck and initcheck would pass everything unseen, and a test must not believe them.
extern "C" __attribute__((visibility("default"))) int pydl_emu_memory_checks_active() {
  return pydl_emu::memory_checks_active() ? 1 : 0;
}
