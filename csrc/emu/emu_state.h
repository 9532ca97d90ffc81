// emu_state.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). The emulated device (H100 or A100), the checks' and the schedule's settings, and the emulator's state:
// plain globals, so no instrumented library function runs on the way from kernel code into it.
#pragma once

#include "emu_types.h"

namespace pydl_emu {

constexpr int kWarp = 32;
constexpr size_t kStack = 128 * 1024;
// Static __shared__ arrays are laid out with a gap of kRedZone bytes after each, which belongs to no array: a
// small overrun lands there and memcheck reports it (a large one that lands inside the next array cannot be told
// from a legal access -- neither can compute-sanitizer on a GPU).
constexpr size_t kRedZone = 64;
constexpr size_t kRedZoneRoom = 8 * 1024;

// ---- the emulated device ---------------------------------------------------------------------------------
struct Device {
  const char* name;
  int sms, cc_major, cc_minor, l2;
  size_t smem_per_sm, smem_optin, smem_default, smem_reserved;
  int threads_per_sm, regs_per_sm, blocks_per_sm;
};
// H100 SXM5 and A100 SXM4 as the CUDA programming guide's compute-capability table gives them.
PYDL_EMU_FN const Device& device() {
  static const Device h100{"NVIDIA H100 80GB HBM3 (pydl emulation)", 132, 9, 0, 50 << 20, 228 * 1024,
                           227 * 1024, 48 * 1024, 1024, 2048, 65536, 32};
  static const Device a100{"NVIDIA A100-SXM4-80GB (pydl emulation)", 108, 8, 0, 40 << 20, 164 * 1024,
                           163 * 1024, 48 * 1024, 1024, 2048, 65536, 32};
  const char* e = std::getenv("PYDL_EMU_DEVICE");
  return (e && (std::strcmp(e, "a100") == 0 || std::strcmp(e, "A100") == 0)) ? a100 : h100;
}

// ---- checks and schedule ---------------------------------------------------------------------------------
enum Check : unsigned { kMemcheck = 1, kRacecheck = 2, kInitcheck = 4, kSynccheck = 8, kAllChecks = 15 };

enum FiberState { kRunnable = 0, kAtBlockBarrier, kAtWarpBarrier, kAtGridBarrier, kDone };
enum WarpOp { kOpSync = 0, kOpActive, kOpShfl, kOpBallot, kOpMatchAny, kOpMatchAll, kOpReduceAdd, kOpReduceMin,
              kOpReduceMax, kOpReduceAnd, kOpReduceOr, kOpReduceXor };

// Switching fibers: ucontext's swapcontext saves and restores the signal mask, a system call each way -- the
// emulator's main cost. With GCC, a fiber is entered once with setcontext and afterwards resumed with
// __builtin_setjmp/__builtin_longjmp (registers and stack pointer only); other compilers keep swapcontext.
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__aarch64__))
#define PYDL_EMU_FAST_SWITCH 1
#else
#define PYDL_EMU_FAST_SWITCH 0
#endif

struct Fiber {
  ucontext_t ctx;
  void* jmp[5];  // where it resumes (fast switch)
  bool started = false;
  uint3 tid;
  int linear = 0;  // index of the thread in its block
  int block = 0;   // index of its block among the resident ones
  int state = kRunnable;
  int quiet = 0;   // saved g_quiet while switched out
  const char* wait_file = "";
  int wait_line = 0;
  // warp primitive in flight: the lane's operands, filled in before it waits, and the result after release
  unsigned mask = 0;
  int op = kOpSync, src = 0;
  uint64_t in = 0, out = 0;
  unsigned warp_gen = 0;  // warp barriers this lane has passed (orders same-warp accesses for racecheck)
  char* stack_lo = nullptr;
};

struct Block {
  uint3 idx{0, 0, 0};
  long linear = 0;
  unsigned char* arena = nullptr;
  size_t arena_size = 0, dyn_bytes = 0, used = 0, static_bytes = 0;
  std::map<long, size_t> shared_at;
  std::vector<uint16_t> owner;           // per arena byte: 0 = no declared array, else 1 + index in names
  std::vector<std::string> names;
  std::vector<unsigned char> written;    // per arena byte: has any thread of this block written it
  unsigned bar_gen = 0;
  int first = 0;                         // its first fiber
};

// One access remembered per byte for racecheck.
struct Access {
  int32_t fiber = -1;  // -1: none
  int32_t block_linear = -1;
  unsigned bar = 0, grid = 0, warp = 0;
  bool atomic = false;
  const void* pc = nullptr;
};
struct Shadow {
  Access w, r1, r2;  // the last write; the last read, and the last read by another thread than r1's
};
constexpr size_t kPage = 4096;
using ShadowPage = std::unique_ptr<Shadow[]>;

struct Range {
  size_t bytes;
  std::string name;
  std::vector<unsigned char> written;  // per byte, for a buffer tracked as uninitialized; empty: all initialized
};

struct KernelInfo {
  std::string name;
  void (*invoke)(void*, void**) = nullptr;  // calls the kernel with arguments given as void* array
  void* fn = nullptr;
  size_t max_dyn = 0;  // cudaFuncAttributeMaxDynamicSharedMemorySize; 0 = never set
  size_t static_smem = 0;
};

// ---- the emulator's state: plain globals (see the header comment) ---------------------------------------
inline int g_current = -1;           // the running fiber, -1 in host code / the scheduler
inline int g_quiet = 0;              // > 0 while emulator code runs on a fiber: its accesses are not the kernel's
inline bool g_in_hook = false;
inline Fiber* g_fibers = nullptr;
inline int g_nfibers = 0;
inline Block* g_blocks = nullptr;
inline int g_nblocks = 0;
inline int g_threads = 0;            // per block
inline dim3 g_grid, g_block;
inline bool g_cooperative = false;
inline unsigned g_grid_gen = 0;
inline bool g_abort = false;
inline bool g_hooks_seen = false;    // a hook has fired: the kernel TU is instrumented
inline uint64_t g_rng = 1;
inline unsigned g_preempt = 16;      // preempt at one tracked access in this many (0: never)
inline ucontext_t g_sched;
inline ucontext_t g_ctx_template;    // one getcontext per wave; each fiber's context starts as a copy
inline void* g_sched_jmp[5];
inline const char* g_kernel = "";      // the name the launch gave (the rewrite's text of it)
inline const void* g_kernel_fn = nullptr;
inline void (*g_body)(void*) = nullptr;
inline void* g_body_ctx = nullptr;

struct State {
  std::vector<Fiber> fibers;
  std::vector<Block> blocks;
  std::vector<char> stacks;
  std::vector<unsigned char> arenas;
  std::vector<int> ready;
  std::unordered_map<uintptr_t, ShadowPage> shadow;  // keyed by address / kPage
  std::map<uintptr_t, Range> tracked;                // device memory: [start, start + bytes)
  std::unordered_map<const void*, KernelInfo> kernels;
  std::string report;
  cudaError_t last_error = cudaSuccess;
  cudaError_t pending = cudaSuccess;  // a kernel fault: sticky, as on a GPU, until pydl_emu::clear_fault()
  unsigned long long launches = 0;
  unsigned checks = kAllChecks;
  bool checks_read = false;
  uint64_t seed = 0;
  bool seed_set = false;
};
PYDL_EMU_FN State& st() {
  static State s;
  return s;
}

// Emulator code reached from a fiber raises g_quiet for its duration (RAII).
struct Quiet {
  PYDL_EMU_NOSAN Quiet() { ++g_quiet; }
  PYDL_EMU_NOSAN ~Quiet() { --g_quiet; }
};

PYDL_EMU_FN uint64_t next_random() {  // xorshift64*: tiny, seedable, good enough for schedules
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 2685821657736338717ull;
}

PYDL_EMU_FN unsigned checks() {
  State& s = st();
  if (!s.checks_read) {
    s.checks_read = true;
    if (const char* e = std::getenv("PYDL_EMU_CHECKS")) {
      unsigned c = 0;
      std::string v = e;
      if (v.find("memcheck") != std::string::npos) c |= kMemcheck;
      if (v.find("racecheck") != std::string::npos) c |= kRacecheck;
      if (v.find("initcheck") != std::string::npos) c |= kInitcheck;
      if (v.find("synccheck") != std::string::npos) c |= kSynccheck;
      if (v == "all") c = kAllChecks;
      s.checks = c;
    }
  }
  return s.checks;
}
// Turn checks on/off from code (a bit set of Check); returns the previous set.
PYDL_EMU_FN unsigned set_checks(unsigned c) {
  unsigned old = checks();
  st().checks = c;
  return old;
}
// The base seed of every launch's schedule: PYDL_EMU_SEED, or one drawn per process and printed in reports.
PYDL_EMU_FN uint64_t seed() {
  State& s = st();
  if (!s.seed_set) {
    s.seed_set = true;
    if (const char* e = std::getenv("PYDL_EMU_SEED")) {
      s.seed = std::strtoull(e, nullptr, 10);
    } else {
      uintptr_t a = reinterpret_cast<uintptr_t>(&s);
      s.seed = (uint64_t(std::time(nullptr)) * 2654435761u ^ a ^ (uint64_t(getpid()) << 20)) % 1000000007ull;
    }
  }
  return s.seed;
}
PYDL_EMU_FN void set_seed(uint64_t v) {
  st().seed = v;
  st().seed_set = true;
}
PYDL_EMU_FN bool memory_checks_active() { return g_hooks_seen; }
PYDL_EMU_FN const std::string& last_report() { return st().report; }

// Device memory that kernels may touch: cudaMalloc registers its blocks; a glue that hands host buffers
// (CPU tensors) to kernels registers them here. memcheck reports any global access outside these ranges.
inline std::pair<const uintptr_t, Range>* g_last_range = nullptr;  // the last buffer an access hit
// `initialized` = false: the buffer's bytes start unwritten (cudaMalloc's do), and initcheck reports a kernel's
// read of one that neither a kernel nor cudaMemcpy/cudaMemset wrote since -- e.g. atomics accumulating into a
// workspace nobody zeroed. Only for buffers whose every host-side write goes through cudaMemcpy/cudaMemset.
//
// Ranges never overlap: a buffer registered now occupies memory that no live buffer holds, so any recorded range
// it overlaps is stale (a workspace the op freed, whose address the allocator handed out again) and is dropped.
// Kept, a stale range starting inside the new buffer would be the one a lookup finds first (the greatest start
// at or below an address), and an access past its end -- but inside the new buffer -- would read as out of bounds
// on whichever runs the allocator happened to reuse that address.
PYDL_EMU_FN void track(const void* p, size_t bytes, const char* name = "device buffer", bool initialized = true) {
  g_last_range = nullptr;
  if (!p || !bytes) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto& t = st().tracked;
  auto it = t.lower_bound(a);
  if (it != t.begin() && std::prev(it)->first + std::prev(it)->second.bytes > a) --it;  // one starting below a
  while (it != t.end() && it->first < a + bytes) it = t.erase(it);
  t[a] = Range{bytes, name ? name : "", initialized ? std::vector<unsigned char>() : std::vector<unsigned char>(bytes, 0)};
}
// Host-side writes (cudaMemcpy, cudaMemset) into tracked buffers: their bytes are initialized from now on.
PYDL_EMU_FN void mark_written(const void* p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto& t = st().tracked;
  for (auto it = t.upper_bound(a + n); it != t.begin();) {
    --it;
    if (it->first + it->second.bytes <= a) break;
    if (it->second.written.empty()) continue;
    const uintptr_t lo = std::max(a, it->first), hi = std::min(a + n, it->first + it->second.bytes);
    std::fill(it->second.written.begin() + long(lo - it->first), it->second.written.begin() + long(hi - it->first), 1);
  }
}
PYDL_EMU_FN void untrack(const void* p) {
  g_last_range = nullptr;
  st().tracked.erase(reinterpret_cast<uintptr_t>(p));
}
PYDL_EMU_FN void untrack_all() {
  g_last_range = nullptr;
  st().tracked.clear();
}

}  // namespace pydl_emu
