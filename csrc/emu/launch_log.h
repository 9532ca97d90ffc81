// Which kernels the emulated backend has launched: the coverage test (tests/test_cuda_emu.py) reads this log
// to prove that every __global__ function of csrc/cuda, in fp32 and a 16-bit type, really ran.
//
// Included by the emulated build (pydl/_build.py) into each kernel translation unit after the emulator. It
// hangs on the emulator's launch observer, which sees every launch and its result; only launches that ran
// count (a refused one -- a cooperative grid too big, too much shared memory -- did not run the kernel). A
// launch is recorded by its key: the kernel's address, or for a kernel template launched with deduced
// arguments the launch site, which lies inside the launching function's instantiation. Either way the test
// names the address from the library's symbol table (`nm`), where the compiler wrote the template arguments,
// so `act_stats_partial<float>` and `act_stats_partial<__half>` are told apart.
#pragma once

#include <dlfcn.h>

#include <cstdio>
#include <map>
#include <string>
#include <utility>

namespace pydl_emu {

// One log for the whole process (an inline function's static is a single object across the libraries).
inline std::map<std::pair<const void*, std::string>, unsigned long long>& launch_log() {
  static std::map<std::pair<const void*, std::string>, unsigned long long> log;
  return log;
}

PYDL_EMU_NOSAN inline void log_launch(const void* key, const char* name, cudaError_t result) {
  if (result == cudaSuccess) ++launch_log()[{key, name ? name : ""}];
}

// Installed when the library is loaded (the observer is one for the process: every unit installs the same).
struct InstallLaunchLog {
  InstallLaunchLog() { g_launch_observer = &log_launch; }
};
inline InstallLaunchLog install_launch_log;

}  // namespace pydl_emu

// "library path \t offset of the key in it \t the launch's name \t launches" per line, for every launch in this
// process (offsets, not addresses: `nm` lists symbols by their offset in the file). The two exported functions
// are inline and `used`: every kernel unit of an op (an op may have several .cu parts) emits them, and the
// linker keeps one, which dlsym then finds.
extern "C" __attribute__((visibility("default"), used)) inline const char* pydl_emu_launch_log() {
  static std::string out;
  out.clear();
  for (const auto& kv : pydl_emu::launch_log()) {
    Dl_info info;
    if (!dladdr(kv.first.first, &info) || !info.dli_fname) continue;
    char num[64];
    std::snprintf(num, sizeof num, "\t%zx\t",
                  size_t(static_cast<const char*>(kv.first.first) - static_cast<const char*>(info.dli_fbase)));
    out += info.dli_fname;
    out += num;
    out += kv.first.second;
    out += "\t" + std::to_string(kv.second) + "\n";
  }
  return out.c_str();
}

// Whether the kernels' loads and stores reached the emulator (the translation unit was instrumented): without
// that, memcheck, racecheck and initcheck would pass everything unseen, and a test must not believe them.
extern "C" __attribute__((visibility("default"), used)) inline int pydl_emu_memory_checks_active() {
  return pydl_emu::memory_checks_active() ? 1 : 0;
}
