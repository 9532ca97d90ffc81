// emu_report.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). Reports: names and source lines of code addresses (addr2line), who a thread is, and how a finding stops
// the kernel (the fiber hands control to the scheduler for good).
#pragma once

#include "emu_state.h"

namespace pydl_emu {

// ---- where things are, for reports -------------------------------------------------------------------------
PYDL_EMU_FN std::string demangle(const char* sym) {
  int status = 0;
  char* d = abi::__cxa_demangle(sym, nullptr, nullptr, &status);
  std::string r = (status == 0 && d) ? d : sym;
  std::free(d);
  return r;
}
// file:line of a code address (the debug info must be there: compile with -g), via addr2line.
PYDL_EMU_FN std::string source_line(const void* pc) {
  if (!pc) return "";
  Dl_info info;
  if (!dladdr(pc, &info) || !info.dli_fname) return "";
  const uintptr_t off = reinterpret_cast<uintptr_t>(pc) - 1 - reinterpret_cast<uintptr_t>(info.dli_fbase);
  std::string fname = info.dli_fname;
  if (fname.empty() || fname.find('\'') != std::string::npos) return "";
  char cmd[4096];
  std::snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' 0x%llx 2>/dev/null", fname.c_str(), (unsigned long long)off);
  FILE* p = popen(cmd, "r");
  if (!p) return "";
  char buf[1024];
  std::string line;
  // -i lists the inlined frames innermost first: take the first one outside the emulator's own headers (an
  // access inside __ldg or atomicAdd is reported at the kernel line that called it)
  while (std::fgets(buf, sizeof buf, p)) {
    std::string l = buf;
    if (line.empty() || line.find("csrc/emu/") != std::string::npos) line = l;
    if (l.find("csrc/emu/") == std::string::npos) break;
  }
  pclose(p);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  if (line.empty() || line[0] == '?') return "";
  const size_t paren = line.find(" (discriminator");
  if (paren != std::string::npos) line.resize(paren);
  return line;
}
PYDL_EMU_FN std::string where(const void* pc) {
  std::string l = source_line(pc);
  return l.empty() ? "" : " at " + l;
}
PYDL_EMU_FN std::string hex_addr(uintptr_t a) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", (unsigned long long)a);
  return b;
}
PYDL_EMU_FN std::string dim(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
PYDL_EMU_FN std::string who(int f) {
  const Fiber& fb = g_fibers[f];
  return "block " + dim(g_blocks[fb.block].idx) + " thread " + dim(fb.tid);
}
PYDL_EMU_FN std::string seed_note() {
  return "(emulation schedule: PYDL_EMU_SEED=" + std::to_string(seed()) + " replays it)";
}

// A kernel's name from its address: the exported symbol if it starts there, else the debug info (addr2line -f).
PYDL_EMU_FN std::string kernel_name(const void* fn, const char* fallback) {
  if (fallback && *fallback && st().kernels.count(fn) && !st().kernels[fn].invoke) return fallback;  // a launch site
  Dl_info i;
  if (dladdr(fn, &i) && i.dli_sname && i.dli_saddr == fn) return demangle(i.dli_sname);
  if (dladdr(fn, &i) && i.dli_fname && std::string(i.dli_fname).find('\'') == std::string::npos) {
    char cmd[4096];
    std::snprintf(cmd, sizeof cmd, "addr2line -f -C -e '%s' 0x%llx 2>/dev/null", i.dli_fname,
                  (unsigned long long)(reinterpret_cast<uintptr_t>(fn) - reinterpret_cast<uintptr_t>(i.dli_fbase)));
    if (FILE* p = popen(cmd, "r")) {
      char buf[1024];
      std::string name;
      if (std::fgets(buf, sizeof buf, p)) name = buf;
      pclose(p);
      while (!name.empty() && name.back() == '\n') name.pop_back();
      if (!name.empty() && name[0] != '?') return name;
    }
  }
  return fallback ? fallback : "?";
}

// Record a finding and stop the kernel: from a fiber, switch to the scheduler for good (the fiber's stack is
// simply abandoned); from the scheduler, just flag it.
[[noreturn]] PYDL_EMU_FN void stop_kernel();
PYDL_EMU_FN void report(const char* check, const std::string& what, cudaError_t code) {
  State& s = st();
  if (g_abort) return;
  g_abort = true;
  s.report = std::string("emulation: ") + check + " in kernel `" + kernel_name(g_kernel_fn, g_kernel) + "`: " + what +
             " " + seed_note();
  s.pending = code;
  if (std::getenv("PYDL_EMU_VERBOSE")) std::fprintf(stderr, "%s\n", s.report.c_str());
}
[[noreturn]] PYDL_EMU_FN void fail(const char* check, const std::string& what, cudaError_t code) {
  report(check, what, code);
  stop_kernel();
}

#if PYDL_EMU_FAST_SWITCH
// (__builtin_longjmp may not be called in the function that called the matching __builtin_setjmp: hence these.)
[[noreturn]] __attribute__((noinline)) PYDL_EMU_NOSAN inline void to_scheduler() { __builtin_longjmp(g_sched_jmp, 1); }
[[noreturn]] __attribute__((noinline)) PYDL_EMU_NOSAN inline void to_fiber(Fiber* f) {
  if (!f->started) {
    f->started = true;
    setcontext(&f->ctx);  // first entry: onto its own stack, into fiber_entry
  }
  __builtin_longjmp(f->jmp, 1);
}
#endif

PYDL_EMU_FN void yield_to_scheduler() {
  Fiber& f = g_fibers[g_current];
  f.quiet = g_quiet;
#if PYDL_EMU_FAST_SWITCH
  if (__builtin_setjmp(f.jmp) == 0) to_scheduler();
#else
  swapcontext(&f.ctx, &g_sched);
#endif
  g_quiet = g_fibers[g_current].quiet;
}
[[noreturn]] PYDL_EMU_FN void stop_kernel() {
  if (g_current < 0) std::abort();  // unreachable: fail() is only called from a fiber
  g_fibers[g_current].state = kDone;
#if PYDL_EMU_FAST_SWITCH
  to_scheduler();
#else
  setcontext(&g_sched);
  std::abort();
#endif
}

PYDL_EMU_FN Fiber& me() {
  if (g_current < 0) {
    std::fprintf(stderr, "emulation: a device function (threadIdx, __syncthreads, ...) was used outside a kernel\n");
    std::abort();
  }
  return g_fibers[g_current];
}
PYDL_EMU_FN Block& my_block() { return g_blocks[g_fibers[g_current].block]; }

}  // namespace pydl_emu
