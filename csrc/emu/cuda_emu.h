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

#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700  // macOS hides the (deprecated, still working) ucontext API without it
#endif
#include <ucontext.h>
#include <unistd.h>
#include <dlfcn.h>
#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#define PYDL_CUDA_EMU 1  // code that must know it runs on the emulator can test this
#define PYDL_EMU_NOSAN __attribute__((no_sanitize("thread")))
#define PYDL_EMU_FN inline PYDL_EMU_NOSAN

// CUDA's math API has isfinite / isinf / isnan / signbit as plain global functions in device code; C++'s
// <cmath> keeps them in std::. Kernels call them unqualified, so bring them into the global namespace.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // only if the rewrite missed a declaration
#define __constant__ static

// The CUDA vector types, with the device's alignment (a uint4 load is one 16-byte access there).
#define PYDL_EMU_VEC1(N, T) \
  struct N##1 { T x; };     \
  PYDL_EMU_FN N##1 make_##N##1(T x) { return N##1{x}; }
#define PYDL_EMU_VEC2(N, T, A)     \
  struct alignas(A) N##2 { T x, y; }; \
  PYDL_EMU_FN N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define PYDL_EMU_VEC3(N, T)      \
  struct N##3 { T x, y, z; };  \
  PYDL_EMU_FN N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define PYDL_EMU_VEC4(N, T, A)           \
  struct alignas(A) N##4 { T x, y, z, w; }; \
  PYDL_EMU_FN N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define PYDL_EMU_VEC(N, T, A2, A4) PYDL_EMU_VEC1(N, T) PYDL_EMU_VEC2(N, T, A2) PYDL_EMU_VEC3(N, T) PYDL_EMU_VEC4(N, T, A4)
PYDL_EMU_VEC(char, signed char, 2, 4)
PYDL_EMU_VEC(uchar, unsigned char, 2, 4)
PYDL_EMU_VEC(short, short, 4, 8)
PYDL_EMU_VEC(ushort, unsigned short, 4, 8)
PYDL_EMU_VEC(int, int, 8, 16)
PYDL_EMU_VEC(uint, unsigned, 8, 16)
PYDL_EMU_VEC(long, long, 16, 16)
PYDL_EMU_VEC(ulong, unsigned long, 16, 16)
PYDL_EMU_VEC(longlong, long long, 16, 16)
PYDL_EMU_VEC(ulonglong, unsigned long long, 16, 16)
PYDL_EMU_VEC(float, float, 8, 16)
PYDL_EMU_VEC(double, double, 16, 16)
#undef PYDL_EMU_VEC
#undef PYDL_EMU_VEC1
#undef PYDL_EMU_VEC2
#undef PYDL_EMU_VEC3
#undef PYDL_EMU_VEC4
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

typedef int cudaError_t;
typedef void* cudaStream_t;
// The numbers are the CUDA runtime's, so an error code means the same in a log from either.
enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchTimeout = 702,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorNotSupported = 801,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxRegistersPerMultiprocessor = 82,
  cudaDevAttrMaxBlocksPerMultiprocessor = 106,
  cudaDevAttrReservedSharedMemoryPerBlock = 111,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem, sharedMemPerBlock;
  int regsPerBlock, warpSize;
  int maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
  int major, minor, multiProcessorCount;
  int l2CacheSize, maxThreadsPerMultiProcessor;
  size_t sharedMemPerMultiprocessor;
  int regsPerMultiprocessor;
  size_t sharedMemPerBlockOptin, reservedSharedMemPerBlock;
  int maxBlocksPerMultiProcessor, cooperativeLaunch;
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, cacheModeCA, maxDynamicSharedSizeBytes;
};

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

// ---- memory access checks (called by the __tsan_* hooks in cuda_emu_hooks.cpp) ------------------------------
inline uintptr_t g_shadow_key = ~uintptr_t(0);  // the last page looked up (most accesses hit it again)
inline Shadow* g_shadow_page = nullptr;
PYDL_EMU_FN Shadow& shadow_of(uintptr_t a) {
  if (a / kPage != g_shadow_key) {
    ShadowPage& p = st().shadow[a / kPage];
    if (!p) p.reset(new Shadow[kPage]);
    g_shadow_key = a / kPage;
    g_shadow_page = p.get();
  }
  return g_shadow_page[a % kPage];
}
PYDL_EMU_FN void forget_shadow(uintptr_t lo, uintptr_t hi) {  // drop the racecheck history of [lo, hi)
  for (uintptr_t k = lo / kPage; k < (hi + kPage - 1) / kPage; ++k) st().shadow.erase(k);
  g_shadow_key = ~uintptr_t(0);
}

PYDL_EMU_FN bool ordered(const Access& p, const Fiber& cur, int cur_index) {
  if (p.fiber < 0) return true;
  if (p.grid != g_grid_gen) return true;  // a grid.sync() (or an earlier launch) separates them
  if (p.block_linear == g_blocks[cur.block].linear) {
    if (p.fiber == cur_index) return true;  // program order
    if (p.bar != g_blocks[cur.block].bar_gen) return true;  // a __syncthreads() separates them
    const Fiber& other = g_fibers[p.fiber];
    if (other.linear / kWarp == cur.linear / kWarp && other.warp_gen != p.warp) return true;  // a warp barrier
  }
  return false;
}

// `region` names the memory for the report: called only when there is one to write.
template <typename R>
PYDL_EMU_FN void race(const char* kind, size_t bytes, const char* space, const R& region,
                      const Access& other, bool other_write, const void* pc, bool write) {
  std::string o = "block " + std::to_string(other.block_linear) + " (linear)";
  if (other.fiber >= 0 && other.fiber < g_nfibers && g_blocks[g_fibers[other.fiber].block].linear == other.block_linear)
    o = who(other.fiber);
  fail("racecheck",
       std::string(kind) + " hazard on " + space + " memory " + region() + ": " + who(g_current) + " " +
           (write ? "writes" : "reads") + " " + std::to_string(bytes) + " byte(s)" + where(pc) + ", and " + o +
           " " + (other_write ? "wrote" : "read") + " the same address" + where(other.pc) + " with no barrier "
           "(__syncthreads / __syncwarp / grid.sync) in between" + (other.atomic ? " (its access was atomic, "
           "this one is not)" : "") + ".",
       cudaErrorLaunchFailure);
}

template <typename R>
PYDL_EMU_FN void race_check(uintptr_t a, size_t n, bool write, bool atomic, const void* pc, const char* space,
                            const R& region) {
  Fiber& f = g_fibers[g_current];
  Access cur;
  cur.fiber = g_current;
  cur.block_linear = int32_t(g_blocks[f.block].linear);
  cur.bar = g_blocks[f.block].bar_gen;
  cur.grid = g_grid_gen;
  cur.warp = f.warp_gen;
  cur.atomic = atomic;
  cur.pc = pc;
  for (size_t i = 0; i < n; ++i) {
    Shadow& sh = shadow_of(a + i);
    if (!ordered(sh.w, f, g_current) && !(sh.w.atomic && atomic))
      race(write ? "write-after-write" : "read-after-write", n, space, region, sh.w, true, pc, write);
    if (write) {
      if (!ordered(sh.r1, f, g_current) && !(sh.r1.atomic && atomic))
        race("write-after-read", n, space, region, sh.r1, false, pc, write);
      if (!ordered(sh.r2, f, g_current) && !(sh.r2.atomic && atomic))
        race("write-after-read", n, space, region, sh.r2, false, pc, write);
      sh.w = cur;
      if (atomic) sh.r1 = sh.r2 = Access();  // an atomic RMW's own read is covered by its write record
    } else {
      if (sh.r1.fiber != g_current || sh.r1.block_linear != cur.block_linear) sh.r2 = sh.r1;
      sh.r1 = cur;
    }
  }
}

PYDL_EMU_FN std::string shared_region(const Block& b, size_t off) {
  const uint16_t o = b.owner[off];
  if (!o) {
    size_t end = off;  // the nearest array before it, to say how far past its end the access is
    while (end > 0 && !b.owner[end - 1]) --end;
    std::string past;
    if (end > 0) {
      size_t start = end - 1;
      while (start > 0 && b.owner[start - 1] == b.owner[end - 1]) --start;
      past = ", " + std::to_string(off - end) + " bytes past the end of `" + b.names[b.owner[end - 1] - 1] + "` (" +
             std::to_string(end - start) + " bytes)";
    }
    return "(offset " + std::to_string(off) + past + ": in no declared __shared__ array)";
  }
  // find where that array starts, to give the element offset
  size_t start = off;
  while (start > 0 && b.owner[start - 1] == o) --start;
  return "`" + b.names[o - 1] + "` (byte " + std::to_string(off - start) + ")";
}

// One load or store of the kernel: `n` bytes at `p`; `pc` is the code address of the access.
PYDL_EMU_FN void on_access_slow(const void* p, size_t n, bool write, bool atomic, const void* pc) {
  const unsigned c = checks();
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  Fiber& f = g_fibers[g_current];
  Block& b = g_blocks[f.block];
  const uintptr_t lo = reinterpret_cast<uintptr_t>(b.arena);
  // (1. the thread's own stack was sorted out by on_access.) 2. shared memory of this block
  if (a >= lo && a < lo + b.arena_size) {
    const size_t off = a - lo;
    if (c & kMemcheck) {
      for (size_t i = 0; i < n; ++i)
        if (off + i >= b.arena_size || !b.owner[off + i] || b.owner[off + i] != b.owner[off])
          fail("memcheck", "out-of-bounds " + std::string(write ? "write" : "read") + " of " + std::to_string(n) +
                               " byte(s) in shared memory " + shared_region(b, off + i) + " by " + who(g_current) +
                               where(pc) + ": outside every __shared__ array of the block.",
               cudaErrorIllegalAddress);
    }
    if (c & kRacecheck) race_check(a, n, write, atomic, pc, "shared", [&] { return shared_region(b, off); });
    if (!write && !atomic && (c & kInitcheck)) {
      for (size_t i = 0; i < n && off + i < b.arena_size; ++i)
        if (!b.written[off + i])
          fail("initcheck", "read of uninitialized shared memory " + shared_region(b, off + i) + " by " +
                                who(g_current) + where(pc) + ": no thread of this block wrote it.",
               cudaErrorLaunchFailure);
    }
    if (write || atomic)
      for (size_t i = 0; i < n && off + i < b.arena_size; ++i) b.written[off + i] = 1;
    return;
  }
  State& s = st();
  // 3. device memory handed to the launch (global memory)
  std::pair<const uintptr_t, Range>* hit = g_last_range;
  if (!hit || a < hit->first || a + n > hit->first + hit->second.bytes) {
    hit = nullptr;
    auto it = s.tracked.upper_bound(a);
    if (it != s.tracked.begin()) {
      --it;
      if (a >= it->first && a + n <= it->first + it->second.bytes) hit = g_last_range = &*it;
    }
  }
  if (hit) {
    if (c & kRacecheck)
      race_check(a, n, write, atomic, pc, "global", [&] {
        return "`" + hit->second.name + "` (byte " + std::to_string(a - hit->first) + ")";
      });
    std::vector<unsigned char>& wr = hit->second.written;
    if (!wr.empty()) {
      const size_t off = a - hit->first;
      if (!write || atomic)  // an atomic reads the old value too
        for (size_t i = 0; i < n && (c & kInitcheck); ++i)
          if (!wr[off + i])
            fail("initcheck", "read of uninitialized global memory `" + hit->second.name + "` (byte " +
                                  std::to_string(off + i) + ") by " + who(g_current) + where(pc) +
                                  (atomic ? " (an atomic reads the old value)" : "") + ": nothing wrote it since "
                                  "it was allocated (cudaMalloc does not zero memory; cudaMemset does).",
                 cudaErrorLaunchFailure);
      if (write || atomic) std::fill(wr.begin() + long(off), wr.begin() + long(off + n), 1);
    }
    return;
  }
  if (!(c & kMemcheck)) return;
  // 4. another block's shared memory, another thread's stack: never reachable on a GPU
  for (int i = 0; i < g_nblocks; ++i) {
    const uintptr_t l = reinterpret_cast<uintptr_t>(g_blocks[i].arena);
    if (a >= l && a < l + g_blocks[i].arena_size)
      fail("memcheck", who(g_current) + " accesses the shared memory of block " + dim(g_blocks[i].idx) + where(pc) +
                           ": a block can only reach its own shared memory.", cudaErrorIllegalAddress);
  }
  // 5. static data of a loaded binary (a constant table): fine. Anything else is outside every buffer.
  Dl_info info;
  if (dladdr(p, &info) && info.dli_fname) {
    const uintptr_t sl = reinterpret_cast<uintptr_t>(s.stacks.data());
    if (!(a >= sl && a < sl + s.stacks.size())) return;
  }
  std::string near;
  auto it = s.tracked.upper_bound(a);
  if (it != s.tracked.begin()) {
    auto prev = std::prev(it);
    if (a >= prev->first && a < prev->first + prev->second.bytes + 4096)
      near = " (" + std::to_string(a - prev->first - prev->second.bytes) + " bytes past the end of `" +
             prev->second.name + "`, " + std::to_string(prev->second.bytes) + " bytes)";
  }
  if (near.empty() && it != s.tracked.end() && it->first > a && it->first - a <= 4096)
    near = " (" + std::to_string(it->first - a) + " bytes before the start of `" + it->second.name + "`)";
  fail("memcheck", "out-of-bounds global " + std::string(write ? "write" : "read") + " of " + std::to_string(n) +
                       " byte(s) at " + hex_addr(a) + near + " by " + who(g_current) + where(pc) +
                       ": the address is in no buffer handed to the kernel" +
                       (s.tracked.empty() ? " (none is registered: cudaMalloc or pydl_emu::track register them)" : "") +
                       ".", cudaErrorIllegalAddress);
}

PYDL_EMU_FN void preempt();
PYDL_EMU_FN void on_access(const void* p, size_t n, bool write, const void* pc) {
  if (g_current < 0 || g_quiet || g_in_hook || g_abort) return;
  // the thread's own stack (its locals, all of them in memory at -O0): private, not checked, no preemption
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(g_fibers[g_current].stack_lo);
  if (a - lo < kStack) return;
  g_in_hook = true;
  g_hooks_seen = true;
  ++g_quiet;
  if (checks() & (kMemcheck | kRacecheck | kInitcheck)) on_access_slow(p, n, write, false, pc);
  --g_quiet;
  g_in_hook = false;
  if (g_preempt && next_random() % g_preempt == 0) preempt();
}
// An atomic read-modify-write of the emulator's atomics, recorded as such.
PYDL_EMU_FN void on_atomic(const void* p, size_t n, const void* pc) {
  if (g_current < 0 || g_quiet || g_in_hook || g_abort) return;
  if (g_preempt && next_random() % g_preempt == 0) preempt();  // interleave around atomics too
  g_in_hook = true;
  ++g_quiet;
  if (checks() & (kMemcheck | kRacecheck | kInitcheck)) on_access_slow(p, n, true, true, pc);
  --g_quiet;
  g_in_hook = false;
}

// ---- the scheduler -------------------------------------------------------------------------------------------
PYDL_EMU_FN void fiber_entry() {
  g_quiet = 0;
  g_body(g_body_ctx);
  g_quiet = 1;
  g_fibers[g_current].state = kDone;
#if PYDL_EMU_FAST_SWITCH
  to_scheduler();
#endif
  // (swapcontext: returning resumes uc_link, the scheduler)
}

PYDL_EMU_FN void preempt() {
  Quiet q;
  Fiber& f = me();
  f.state = kRunnable;
  st().ready.push_back(g_current);
  yield_to_scheduler();
}

PYDL_EMU_FN void wait(int state, const char* file, int line) {
  Fiber& f = me();
  f.state = state;
  f.wait_file = file;
  f.wait_line = line;
  yield_to_scheduler();
}

PYDL_EMU_FN std::string site(const Fiber& f) { return std::string(f.wait_file) + ":" + std::to_string(f.wait_line); }

// "where each thread waits": threads grouped by (block, what, where), with their thread ranges.
PYDL_EMU_FN std::string waits() {
  std::map<std::string, std::vector<int>> groups;
  for (int i = 0; i < g_nfibers; ++i) {
    const Fiber& f = g_fibers[i];
    std::string what;
    switch (f.state) {
      case kAtBlockBarrier: what = "wait at __syncthreads() " + site(f); break;
      case kAtWarpBarrier: what = "wait at a warp primitive " + site(f) + " (mask 0x" + [&] {
          char b[16]; std::snprintf(b, sizeof b, "%08x", f.mask); return std::string(b); }() + ")"; break;
      case kAtGridBarrier: what = "wait at grid.sync() " + site(f); break;
      case kDone: what = "have exited"; break;
      default: what = "are runnable"; break;
    }
    groups["block " + dim(g_blocks[f.block].idx) + ": " + what].push_back(f.linear);
  }
  std::string out;
  for (auto& g : groups) {
    std::string ids;
    const auto& v = g.second;
    for (size_t i = 0; i < v.size();) {
      size_t j = i;
      while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
      if (!ids.empty()) ids += ",";
      ids += j == i ? std::to_string(v[i]) : std::to_string(v[i]) + "-" + std::to_string(v[j]);
      i = j + 1;
    }
    out += "\n  " + g.first.substr(0, g.first.find(':')) + ": threads " + ids + g.first.substr(g.first.find(':') + 1);
  }
  return out;
}

PYDL_EMU_FN std::string hex(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

// The lanes of warp `w` of block `b` that exist (a block whose size is not a multiple of 32 has a partial warp).
PYDL_EMU_FN unsigned existing_lanes(int w) {
  const int n = g_threads - w * kWarp;
  return n >= kWarp ? 0xffffffffu : (n <= 0 ? 0u : ((1u << n) - 1u));
}

PYDL_EMU_FN uint64_t warp_result(const Fiber& f, const Fiber* warp, unsigned group) {
  const int lane = f.linear % kWarp;
  switch (f.op) {
    case kOpShfl: {
      // a source lane outside the group holds no defined value: give garbage, as the hardware may
      if (f.src < 0 || f.src >= kWarp || !(group >> f.src & 1u)) return ~uint64_t(0);
      return warp[f.src].in;
    }
    case kOpBallot: {
      uint64_t r = 0;
      for (int l = 0; l < kWarp; ++l)
        if ((group >> l & 1u) && warp[l].in) r |= 1ull << l;
      return r;
    }
    case kOpMatchAny: {
      uint64_t r = 0;
      for (int l = 0; l < kWarp; ++l)
        if ((group >> l & 1u) && warp[l].in == f.in) r |= 1ull << l;
      return r;
    }
    case kOpMatchAll: {
      for (int l = 0; l < kWarp; ++l)
        if ((group >> l & 1u) && warp[l].in != f.in) return 0;
      return uint64_t(group) | (1ull << 32);  // bit 32: the predicate
    }
    default: {  // the __reduce_*_sync family, on 32-bit integers
      uint32_t acc = 0;
      bool first = true;
      for (int l = 0; l < kWarp; ++l) {
        if (!(group >> l & 1u)) continue;
        const uint32_t v = uint32_t(warp[l].in);
        const bool sgn = warp[l].src != 0;  // src carries "signed" for the reductions
        if (first) { acc = v; first = false; continue; }
        switch (f.op) {
          case kOpReduceAdd: acc += v; break;
          case kOpReduceAnd: acc &= v; break;
          case kOpReduceOr: acc |= v; break;
          case kOpReduceXor: acc ^= v; break;
          case kOpReduceMin: acc = sgn ? uint32_t(std::min(int32_t(acc), int32_t(v))) : std::min(acc, v); break;
          case kOpReduceMax: acc = sgn ? uint32_t(std::max(int32_t(acc), int32_t(v))) : std::max(acc, v); break;
        }
      }
      (void)lane;
      return acc;
    }
  }
}

// Try to release one barrier; returns true if some fiber became runnable. Reports synccheck findings.
PYDL_EMU_FN bool release(bool stuck) {
  State& s = st();
  bool released = false;
  const bool sync = checks() & kSynccheck;
  const int nwarps = (g_threads + kWarp - 1) / kWarp;
  // warp primitives: the lanes a mask names must all have arrived, with the same mask at the same primitive
  for (int b = 0; b < g_nblocks; ++b) {
    for (int w = 0; w < nwarps; ++w) {
      Fiber* warp = g_fibers + g_blocks[b].first + w * kWarp;
      const unsigned exist = existing_lanes(w);
      for (int l = 0; l < kWarp; ++l) {
        if (!(exist >> l & 1u) || warp[l].state != kAtWarpBarrier) continue;
        const Fiber& f = warp[l];
        if (f.op == kOpActive) {  // __activemask: once no lane of the warp can run, the lanes waiting here
          bool blocked = true;
          unsigned here = 0;
          for (int k = 0; k < kWarp; ++k) {
            if (!(exist >> k & 1u)) continue;
            blocked = blocked && warp[k].state != kRunnable;
            if (warp[k].state == kAtWarpBarrier && warp[k].op == kOpActive && warp[k].wait_line == f.wait_line &&
                std::strcmp(warp[k].wait_file, f.wait_file) == 0)
              here |= 1u << k;
          }
          if (!blocked) continue;
          for (int k = 0; k < kWarp; ++k)
            if (here >> k & 1u) {
              warp[k].out = here;
              warp[k].state = kRunnable;
              s.ready.push_back(int(&warp[k] - g_fibers));
            }
          released = true;
          continue;
        }
        const unsigned m = f.mask & exist;  // (with synccheck off, lanes that do not exist are ignored)
        if (!(m >> l & 1u)) {
          report("synccheck", "warp primitive at " + site(f) + " called by " + who(int(&f - g_fibers)) +
                                  " with mask " + hex(m) + ", which does not name the calling lane " +
                                  std::to_string(l) + " (undefined behaviour in CUDA).", cudaErrorLaunchFailure);
          return false;
        }
        if (sync && (f.mask & ~exist)) {
          report("synccheck", "warp primitive at " + site(f) + " called by " + who(int(&f - g_fibers)) +
                                  " with mask " + hex(f.mask) + " naming lanes that do not exist in this warp (the "
                                  "block has " + std::to_string(g_threads) + " threads): " + hex(f.mask & ~exist) + ".",
                 cudaErrorLaunchFailure);
          return false;
        }
        bool all_here = true;
        for (int k = 0; k < kWarp; ++k) {
          if (!(m >> k & 1u)) continue;
          if (warp[k].state == kDone && sync) {
            report("synccheck", "warp primitive at " + site(f) + " called by " + who(int(&f - g_fibers)) +
                                    " with mask " + hex(m) + ", which names lane " + std::to_string(k) +
                                    " -- that lane has exited (every lane a mask names must call the primitive).",
                   cudaErrorLaunchFailure);
            return false;
          }
          if (warp[k].state != kAtWarpBarrier) all_here = false;
        }
        if (!all_here) continue;
        for (int k = 0; k < kWarp; ++k) {
          if (!(m >> k & 1u)) continue;
          if (sync && (warp[k].mask != f.mask || warp[k].wait_line != f.wait_line ||
                       std::strcmp(warp[k].wait_file, f.wait_file) != 0 || warp[k].op != f.op)) {
            report("synccheck", "the lanes of one warp mask wait at different warp primitives: lane " +
                                    std::to_string(l) + " at " + site(f) + " with mask " + hex(m) + ", lane " +
                                    std::to_string(k) + " at " + site(warp[k]) + " with mask " + hex(warp[k].mask) +
                                    " (" + who(int(&f - g_fibers)) + ").", cudaErrorLaunchFailure);
            return false;
          }
        }
        for (int k = 0; k < kWarp; ++k)
          if (m >> k & 1u) warp[k].out = warp_result(warp[k], warp, m);
        for (int k = 0; k < kWarp; ++k)
          if (m >> k & 1u) {
            warp[k].state = kRunnable;
            ++warp[k].warp_gen;
            s.ready.push_back(int(&warp[k] - g_fibers));
          }
        released = true;
      }
    }
  }
  if (released) return true;
  // __syncthreads: every live thread of the block has arrived (exited threads do not hold a barrier up)
  for (int b = 0; b < g_nblocks; ++b) {
    Fiber* fb = g_fibers + g_blocks[b].first;
    int live = 0, here = 0;
    const Fiber* first = nullptr;
    for (int t = 0; t < g_threads; ++t) {
      if (fb[t].state == kDone) continue;
      ++live;
      if (fb[t].state == kAtBlockBarrier) {
        ++here;
        if (!first) first = &fb[t];
        else if (sync && (fb[t].wait_line != first->wait_line || std::strcmp(fb[t].wait_file, first->wait_file))) {
          report("synccheck", "divergent __syncthreads() in block " + dim(g_blocks[b].idx) + ": thread " +
                                  dim(first->tid) + " waits at " + site(*first) + ", thread " + dim(fb[t].tid) +
                                  " at " + site(fb[t]) + " (every thread of a block must reach the same barrier).",
                 cudaErrorLaunchFailure);
          return false;
        }
      }
    }
    if (live && here == live) {
      ++g_blocks[b].bar_gen;
      for (int t = 0; t < g_threads; ++t)
        if (fb[t].state == kAtBlockBarrier) {
          fb[t].state = kRunnable;
          s.ready.push_back(g_blocks[b].first + t);
        }
      released = true;
    }
  }
  if (released) return true;
  // grid.sync(): every live thread of the (cooperative, all-resident) grid
  int live = 0, here = 0;
  for (int i = 0; i < g_nfibers; ++i) {
    live += g_fibers[i].state != kDone;
    here += g_fibers[i].state == kAtGridBarrier;
  }
  if (live && here == live) {
    ++g_grid_gen;
    for (int b = 0; b < g_nblocks; ++b) ++g_blocks[b].bar_gen;  // grid.sync() is a block barrier too
    for (int i = 0; i < g_nfibers; ++i)
      if (g_fibers[i].state == kAtGridBarrier) {
        g_fibers[i].state = kRunnable;
        s.ready.push_back(i);
      }
    return true;
  }
  if (stuck && live) {
    report("synccheck", "DEADLOCK: no thread can go on. Every thread of a block must reach the same "
                        "__syncthreads() (not one inside an `if` only some threads take), and every lane a warp "
                        "primitive's mask names must call it. Where the threads are:" + waits(),
           cudaErrorLaunchFailure);
  }
  return false;
}

PYDL_EMU_FN void run_wave() {
  State& s = st();
  s.ready.clear();
  getcontext(&g_ctx_template);
  for (int i = 0; i < g_nfibers; ++i) {
    Fiber& f = g_fibers[i];
    f.state = kRunnable;
    f.quiet = 0;
    f.warp_gen = 0;
    f.started = false;
    f.ctx = g_ctx_template;
    f.ctx.uc_stack.ss_sp = f.stack_lo;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &g_sched;
    makecontext(&f.ctx, fiber_entry, 0);
    s.ready.push_back(i);
  }
  for (;;) {
    while (!s.ready.empty() && !g_abort) {
      const size_t j = size_t(next_random() % s.ready.size());
      const int i = s.ready[j];
      s.ready[j] = s.ready.back();
      s.ready.pop_back();
      if (g_fibers[i].state != kRunnable) continue;
      g_current = i;
#if PYDL_EMU_FAST_SWITCH
      if (__builtin_setjmp(g_sched_jmp) == 0) to_fiber(&g_fibers[i]);
#else
      swapcontext(&g_sched, &g_fibers[i].ctx);
#endif
      g_current = -1;
      g_in_hook = false;  // a check that stopped the kernel from inside a hook never returned to clear it
    }
    if (g_abort) return;
    if (!release(false) && !release(true)) return;
    if (g_abort) return;
  }
}

PYDL_EMU_FN void set_config_error(cudaError_t code, const std::string& why) {
  State& s = st();
  s.last_error = code;
  if (s.pending == cudaSuccess) s.report = "emulation: " + why;  // a pending fault's report is kept
}

PYDL_EMU_FN int occupancy(int threads, size_t smem) {
  const Device& d = device();
  if (threads <= 0 || threads > 1024) return 0;
  const int warps = (threads + kWarp - 1) / kWarp;
  int n = std::min(d.blocks_per_sm, d.threads_per_sm / (warps * kWarp));
  if (smem) {
    const size_t per = (smem + d.smem_reserved + 127) / 128 * 128;
    n = std::min<long>(n, long(d.smem_per_sm / per));
  }
  return n;  // registers are not modelled: the emulator does not know a kernel's register count
}

PYDL_EMU_FN KernelInfo& info(const void* fn) { return st().kernels[fn]; }

// Called after every launch, whichever way it was made (<<<>>>, a deduced template, cudaLaunchKernel,
// cudaLaunchCooperativeKernel): the kernel's key (its address; for a kernel template launched with deduced
// arguments, its launch site), the name the launch gave (may be empty), and the launch's result. A coverage
// log hangs here.
inline void (*g_launch_observer)(const void* kernel, const char* name, cudaError_t result) = nullptr;

PYDL_EMU_FN cudaError_t launch_checked(const void* fn, const char* name, dim3 grid, dim3 block, size_t smem,
                                       bool coop, void (*body)(void*), void* ctx);
// Run a launch: check the configuration as the driver does, then every block.
PYDL_EMU_FN cudaError_t launch(const void* fn, const char* name, dim3 grid, dim3 block, size_t smem, bool coop,
                               void (*body)(void*), void* ctx) {
  const cudaError_t r = launch_checked(fn, name, grid, block, smem, coop, body, ctx);
  if (g_launch_observer) g_launch_observer(fn, name ? name : "", r);
  return r;
}
PYDL_EMU_FN cudaError_t launch_checked(const void* fn, const char* name, dim3 grid, dim3 block, size_t smem, bool coop,
                               void (*body)(void*), void* ctx) {
  State& s = st();
  if (s.pending != cudaSuccess) return s.last_error = s.pending;  // a faulted context runs nothing more
  g_kernel_fn = fn;
  const Device& d = device();
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  KernelInfo& ki = info(fn);
  if (ki.name.empty()) ki.name = name && *name ? name : kernel_name(fn, "kernel");
  const std::string cfg = "launch of `" + ki.name + "` with grid (" + std::to_string(grid.x) + "," +
                          std::to_string(grid.y) + "," + std::to_string(grid.z) + ") and block (" +
                          std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) + ")";
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
    set_config_error(cudaErrorInvalidConfiguration, cfg + ": a block has at most 1024 threads (x, y <= 1024, "
                     "z <= 64) and no zero dimension -- the kernel did not run");
    return cudaErrorInvalidConfiguration;
  }
  if (blocks == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    set_config_error(cudaErrorInvalidConfiguration, cfg + ": grid dimensions are 1..2^31-1 (x) and 1..65535 "
                     "(y, z) -- the kernel did not run");
    return cudaErrorInvalidConfiguration;
  }
  const size_t max_dyn = ki.max_dyn ? ki.max_dyn : d.smem_default;
  if (smem > max_dyn) {
    set_config_error(cudaErrorInvalidValue, cfg + " asks for " + std::to_string(smem) + " bytes of dynamic shared "
                     "memory; the limit for this kernel is " + std::to_string(max_dyn) + (ki.max_dyn ? "" :
                     " (48 KB unless raised with cudaFuncSetAttribute(kernel, "
                     "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))") + " -- the kernel did not run");
    return cudaErrorInvalidValue;
  }
  if (coop) {
    const long long resident = 1ll * occupancy(int(threads), smem + ki.static_smem) * d.sms;
    if ((long long)blocks > resident) {
      set_config_error(cudaErrorCooperativeLaunchTooLarge, "cooperative " + cfg + ": " + std::to_string(blocks) +
                       " blocks, but only " + std::to_string(resident) + " can be resident at once on the " +
                       d.name + " -- the kernel did not run");
      return cudaErrorCooperativeLaunchTooLarge;
    }
  }
  const char* cap_env = std::getenv("PYDL_EMU_MAX_THREADS");
  const unsigned long long cap = cap_env ? std::strtoull(cap_env, nullptr, 10) : (1ull << 22);
  if (threads * blocks > cap) {
    set_config_error(cudaErrorInvalidValue, cfg + ": " + std::to_string(threads * blocks) + " threads in all, "
                     "more than the emulator runs (PYDL_EMU_MAX_THREADS=" + std::to_string(cap) + "): test sizes "
                     "need far fewer -- check how the grid is computed");
    return cudaErrorInvalidValue;
  }
  // set up the resident blocks and their fibers: all blocks for a cooperative launch, else one at a time
  std::vector<uint3> order;
  order.reserve(size_t(blocks));
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
  g_rng = seed() * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;  // every launch replays from the base seed
  for (int k = 0; k < 4; ++k) next_random();
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[size_t(next_random() % i)]);
  const int per_wave = coop ? int(blocks) : 1;
  const size_t dyn = (smem + 127) / 128 * 128;
  // dynamic first, then up to 48 KB of static arrays; whole shadow pages, so forgetting an arena's racecheck
  // history forgets nothing else
  const size_t arena = (dyn + d.smem_default + kRedZoneRoom + kPage - 1) / kPage * kPage;
  s.fibers.assign(size_t(threads) * per_wave, Fiber());
  s.blocks.assign(size_t(per_wave), Block());
  if (s.stacks.size() < s.fibers.size() * kStack) s.stacks.assign(s.fibers.size() * kStack, 0);
  s.arenas.assign(arena * per_wave + kPage, 0xFF);
  g_fibers = s.fibers.data();
  g_nfibers = int(s.fibers.size());
  g_blocks = s.blocks.data();
  g_nblocks = per_wave;
  g_threads = int(threads);
  g_grid = grid;
  g_block = block;
  g_cooperative = coop;
  g_grid_gen = 0;
  g_abort = false;
  g_kernel = ki.name.c_str();
  g_body = body;
  g_body_ctx = ctx;
  s.shadow.clear();
  g_shadow_key = ~uintptr_t(0);
  const char* pre = std::getenv("PYDL_EMU_PREEMPT");
  g_preempt = pre ? unsigned(std::atoi(pre)) : 16u;
  unsigned char* arena0 = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(s.arenas.data()) + kPage - 1) / kPage * kPage);
  for (int b = 0; b < per_wave; ++b) {
    Block& bk = s.blocks[size_t(b)];
    bk.arena = arena0 + size_t(b) * arena;
    bk.arena_size = arena;
    bk.dyn_bytes = dyn;
    bk.first = b * int(threads);
    bk.owner.assign(arena, 0);
    bk.written.assign(arena, 0);
    bk.names.clear();
    if (smem) {
      bk.names.push_back("extern __shared__ (dynamic, " + std::to_string(smem) + " bytes)");
      std::fill(bk.owner.begin(), bk.owner.begin() + long(smem), uint16_t(1));
    }
    int i = 0;
    for (unsigned z = 0; z < block.z; ++z)
      for (unsigned y = 0; y < block.y; ++y)
        for (unsigned x = 0; x < block.x; ++x, ++i) {
          Fiber& f = s.fibers[size_t(bk.first + i)];
          f.tid = uint3{x, y, z};
          f.linear = i;
          f.block = b;
          f.stack_lo = s.stacks.data() + size_t(bk.first + i) * kStack;
        }
  }
  ++s.launches;
  for (size_t w = 0; w < order.size() && !g_abort; w += size_t(per_wave)) {
    for (int b = 0; b < per_wave; ++b) {
      Block& bk = s.blocks[size_t(b)];
      const uint3 idx = order[w + size_t(b)];
      bk.idx = idx;
      bk.linear = long(idx.x) + long(grid.x) * (long(idx.y) + long(grid.y) * long(idx.z));
      if (!coop) {  // the arena is reused: a fresh, garbage-filled one for each block
        std::fill(bk.arena, bk.arena + bk.arena_size, 0xFF);
        std::fill(bk.written.begin(), bk.written.end(), 0);
        std::fill(bk.owner.begin() + long(smem), bk.owner.end(), uint16_t(0));
        bk.names.resize(smem ? 1 : 0);
        bk.shared_at.clear();
        bk.used = 0;
        bk.static_bytes = 0;
        bk.bar_gen = 0;
        // forget this arena's racecheck history: another block's accesses are not this block's
        forget_shadow(reinterpret_cast<uintptr_t>(bk.arena), reinterpret_cast<uintptr_t>(bk.arena) + bk.arena_size);
      }
    }
    run_wave();
  }
  for (int b = 0; b < per_wave; ++b) ki.static_smem = std::max(ki.static_smem, s.blocks[size_t(b)].static_bytes);
  g_nfibers = 0;
  g_nblocks = 0;
  g_current = -1;
  if (g_abort) {
    s.last_error = s.pending;
    return s.pending;
  }
  return cudaSuccess;
}

// Calls a kernel with its arguments given as an array of pointers (cudaLaunchKernel's convention).
template <typename... A, size_t... I>
PYDL_EMU_FN void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
PYDL_EMU_FN void invoke_erased(void* fn, void** args) {
  call_with(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}
// Remember how to call a kernel, so that a launch through a `const void*` (cudaLaunchCooperativeKernel) works.
template <typename... A>
PYDL_EMU_FN KernelInfo& register_kernel(void (*k)(A...)) {
  KernelInfo& ki = info(reinterpret_cast<const void*>(k));
  ki.fn = reinterpret_cast<void*>(k);
  ki.invoke = &invoke_erased<A...>;
  return ki;
}

struct ErasedCall {
  void (*invoke)(void*, void**);
  void* fn;
  void** args;
};
PYDL_EMU_FN void erased_body(void* p) {
  ErasedCall* c = static_cast<ErasedCall*>(p);
  c->invoke(c->fn, c->args);
}
PYDL_EMU_FN cudaError_t launch_erased(const void* fn, dim3 grid, dim3 block, void** args, size_t smem, bool coop) {
  State& s = st();
  auto it = s.kernels.find(fn);
  if (it == s.kernels.end() || !it->second.invoke) {
    set_config_error(cudaErrorInvalidDeviceFunction, "a launch through a `const void*` of a kernel the emulator has "
                     "not seen with its type: pass the kernel to cudaFuncSetAttribute / "
                     "cudaOccupancyMaxActiveBlocksPerMultiprocessor / pydl_emu::register_kernel first");
    return cudaErrorInvalidDeviceFunction;
  }
  ErasedCall c{it->second.invoke, it->second.fn, args};
  return launch(fn, nullptr, grid, block, smem, coop, &erased_body, &c);
}

template <typename L>
PYDL_EMU_FN void call_lambda(void* p) {
  (*static_cast<L*>(p))();
}

struct Launcher {
  dim3 grid, block;
  size_t smem;
  PYDL_EMU_NOSAN Launcher(dim3 g, dim3 b, size_t sm = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(sm) {}
  template <typename... A>
  PYDL_EMU_NOSAN auto bind(void (*kernel)(A...), const char* name = "") {
    register_kernel(kernel);
    Launcher self = *this;
    return [self, kernel, name](auto&&... args) PYDL_EMU_NOSAN {
      auto body = [&]() PYDL_EMU_NOSAN { kernel(args...); };
      launch(reinterpret_cast<const void*>(kernel), name, self.grid, self.block, self.smem, false,
             &call_lambda<decltype(body)>, &body);
    };
  }
  // A kernel template whose arguments the launch deduces: `call` is a generic lambda that calls it. With no
  // function pointer to go by, the launch site stands for the kernel (one key per lambda type).
  template <typename L>
  PYDL_EMU_NOSAN auto bind_deduced(L call, const char* name) {
    Launcher self = *this;
    return [self, call, name](auto&&... args) PYDL_EMU_NOSAN {
      static const char site = 0;
      auto body = [&]() PYDL_EMU_NOSAN { call(args...); };
      launch(&site, name, self.grid, self.block, self.smem, false, &call_lambda<decltype(body)>, &body);
    };
  }
};

// ---- shared memory -------------------------------------------------------------------------------------------
template <typename T>
PYDL_EMU_FN T& shared(long key, const char* name = "__shared__") {
  Quiet q;
  Block& b = my_block();
  auto it = b.shared_at.find(key);
  if (it == b.shared_at.end()) {
    // 128-byte aligned like the device's (the rewrite drops __align__; wide vector and WMMA loads need it)
    const size_t align = alignof(T) > 128 ? alignof(T) : 128;
    const size_t at = (std::max(b.used, b.dyn_bytes) + kRedZone + align - 1) / align * align;
    b.static_bytes += sizeof(T);
    if (b.static_bytes > device().smem_default || at + sizeof(T) + kRedZone > b.arena_size) {
      fail("memcheck", "more than 48 KB of static __shared__ memory in one block (the compiler refuses that on a "
                       "GPU; use dynamic shared memory with the opt-in attribute)", cudaErrorInvalidValue);
    }
    b.used = at + sizeof(T);  // the end of the static arrays so far; the next one starts kRedZone further
    b.names.push_back(name);
    std::fill(b.owner.begin() + long(at), b.owner.begin() + long(at + sizeof(T)), uint16_t(b.names.size()));
    it = b.shared_at.emplace(key, at).first;
  }
  return *reinterpret_cast<T*>(b.arena + it->second);
}
template <typename T>
PYDL_EMU_FN T* dynamic_shared(const char* = "") {
  Quiet q;
  return reinterpret_cast<T*>(my_block().arena);
}

// ---- warp primitives -----------------------------------------------------------------------------------------
template <typename T>
PYDL_EMU_FN uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "a warp primitive on a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
PYDL_EMU_FN T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
PYDL_EMU_FN int lane() { return me().linear % kWarp; }
// Deposit this lane's operand, wait for the lanes of `mask`, return what the release computed for this lane.
PYDL_EMU_FN uint64_t warp_op(unsigned mask, int op, uint64_t in, int src, const char* file, int line) {
  Quiet q;
  Fiber& f = me();
  f.mask = mask;
  f.op = op;
  f.in = in;
  f.src = src;
  wait(kAtWarpBarrier, file, line);
  return g_fibers[g_current].out;
}

}  // namespace pydl_emu

// ---- built-in variables (by value: the kernel's reads of them are not memory accesses of the kernel) ---------
namespace pydl_emu {
PYDL_EMU_FN uint3 thread_idx() { return g_fibers[g_current].tid; }
PYDL_EMU_FN uint3 block_idx() { return g_blocks[g_fibers[g_current].block].idx; }
PYDL_EMU_FN dim3 block_dim() { return g_block; }
PYDL_EMU_FN dim3 grid_dim() { return g_grid; }
}  // namespace pydl_emu
#define threadIdx (pydl_emu::thread_idx())
#define blockIdx (pydl_emu::block_idx())
#define blockDim (pydl_emu::block_dim())
#define gridDim (pydl_emu::grid_dim())
constexpr int warpSize = 32;

// ---- synchronisation ------------------------------------------------------------------------------------------
// The call site (file:line of the caller) comes from default arguments, so deadlock and synccheck reports can
// say where each thread waits.
PYDL_EMU_FN void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  pydl_emu::Quiet q;
  pydl_emu::wait(pydl_emu::kAtBlockBarrier, file, line);
}
PYDL_EMU_FN int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE());
PYDL_EMU_FN void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
  pydl_emu::warp_op(mask, pydl_emu::kOpSync, 0, 0, file, line);
}
PYDL_EMU_FN void __threadfence() {}
PYDL_EMU_FN void __threadfence_block() {}
PYDL_EMU_FN void __threadfence_system() {}

// ---- warp primitives ------------------------------------------------------------------------------------------
template <typename T>
PYDL_EMU_FN T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = (l & ~(width - 1)) + (src & (width - 1));
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), s, file, line));
}
template <typename T>
PYDL_EMU_FN T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = (l & (width - 1)) >= int(delta) ? l - int(delta) : l;
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), s, file, line));
}
template <typename T>
PYDL_EMU_FN T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                               const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = (l & (width - 1)) + int(delta) < width ? l + int(delta) : l;
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), s, file, line));
}
template <typename T>
PYDL_EMU_FN T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  const int l = pydl_emu::lane();
  const int s = l ^ lane_mask;
  // lanes may read from earlier width-groups but not later ones (they get their own value), as CUDA specifies
  const int r = s >= (l & ~(width - 1)) + width ? l : s;
  return pydl_emu::from_bits<T>(pydl_emu::warp_op(mask, pydl_emu::kOpShfl, pydl_emu::to_bits(v), r, file, line));
}
PYDL_EMU_FN unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
  return unsigned(pydl_emu::warp_op(mask, pydl_emu::kOpBallot, pred ? 1 : 0, 0, file, line));
}
PYDL_EMU_FN int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return __ballot_sync(mask, pred, file, line) != 0;
}
PYDL_EMU_FN int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return __ballot_sync(mask, !pred, file, line) == 0;
}
PYDL_EMU_FN int __uni_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const unsigned b = __ballot_sync(mask, pred, file, line);
  return b == 0 || b == mask;
}
template <typename T>
PYDL_EMU_FN unsigned __match_any_sync(unsigned mask, T v, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
  return unsigned(pydl_emu::warp_op(mask, pydl_emu::kOpMatchAny, pydl_emu::to_bits(v), 0, file, line));
}
template <typename T>
PYDL_EMU_FN unsigned __match_all_sync(unsigned mask, T v, int* pred, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
  const uint64_t r = pydl_emu::warp_op(mask, pydl_emu::kOpMatchAll, pydl_emu::to_bits(v), 0, file, line);
  *pred = int(r >> 32);
  return unsigned(r);
}
#define PYDL_EMU_REDUCE(NAME, OP, T, SIGNED)                                                                    \
  PYDL_EMU_FN T NAME(unsigned mask, T v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) { \
    return T(uint32_t(pydl_emu::warp_op(mask, pydl_emu::OP, uint32_t(v), SIGNED, file, line)));              \
  }
PYDL_EMU_REDUCE(__reduce_add_sync, kOpReduceAdd, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_add_sync, kOpReduceAdd, int, 1)
PYDL_EMU_REDUCE(__reduce_min_sync, kOpReduceMin, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_min_sync, kOpReduceMin, int, 1)
PYDL_EMU_REDUCE(__reduce_max_sync, kOpReduceMax, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_max_sync, kOpReduceMax, int, 1)
PYDL_EMU_REDUCE(__reduce_and_sync, kOpReduceAnd, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_or_sync, kOpReduceOr, unsigned, 0)
PYDL_EMU_REDUCE(__reduce_xor_sync, kOpReduceXor, unsigned, 0)
#undef PYDL_EMU_REDUCE
// The lanes of the warp that execute this __activemask() together. The emulator has no program counter per
// warp, so it lets every lane of the warp run until it is blocked (here, at another primitive or barrier, or
// exited); the lanes waiting here then form the "converged" set -- the lanes of the other side of a branch
// are not in it, as on a GPU.
PYDL_EMU_FN unsigned __activemask(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return unsigned(pydl_emu::warp_op(0, pydl_emu::kOpActive, 0, 0, file, line));
}
PYDL_EMU_FN int __syncthreads_count(int pred, const char* file, int line);

// ---- atomics ---------------------------------------------------------------------------------------------------
// Atomic by construction (a fiber is never switched out inside one); racecheck records them as atomic accesses.
// The value's type is the pointee's (not deduced from `v`), so atomicAdd(&unsigned_counter, 1) converts 1 as
// CUDA's overloads do. The integer-only operations refuse floating-point types as nvcc does.
namespace pydl_emu {
template <typename T>
struct ident {
  using type = T;
};
template <typename T>
constexpr bool kAtomicType = std::is_same<T, int>::value || std::is_same<T, unsigned>::value ||
                             std::is_same<T, unsigned long long>::value || std::is_same<T, long long>::value ||
                             std::is_same<T, float>::value || std::is_same<T, double>::value;
}  // namespace pydl_emu
#define PYDL_EMU_ATOMIC(NAME, INTEGER_ONLY, EXPR)                                                            \
  template <typename T>                                                                                      \
  PYDL_EMU_FN T NAME(T* p, typename pydl_emu::ident<T>::type v) {                                            \
    static_assert(pydl_emu::kAtomicType<T> || !INTEGER_ONLY, #NAME ": unsupported type");                   \
    static_assert(!INTEGER_ONLY || std::is_integral<T>::value, #NAME " exists for integer types only");       \
    pydl_emu::on_atomic(p, sizeof(T), __builtin_return_address(0));                                          \
    const T old = *p;                                                                                        \
    *p = (EXPR);                                                                                             \
    return old;                                                                                              \
  }
PYDL_EMU_ATOMIC(atomicAdd, false, T(old + v))
PYDL_EMU_ATOMIC(atomicSub, true, T(old - v))
PYDL_EMU_ATOMIC(atomicExch, false, v)
PYDL_EMU_ATOMIC(atomicMax, true, old > v ? old : v)
PYDL_EMU_ATOMIC(atomicMin, true, old < v ? old : v)
PYDL_EMU_ATOMIC(atomicAnd, true, T(old & v))
PYDL_EMU_ATOMIC(atomicOr, true, T(old | v))
PYDL_EMU_ATOMIC(atomicXor, true, T(old ^ v))
#undef PYDL_EMU_ATOMIC
PYDL_EMU_FN unsigned atomicInc(unsigned* p, unsigned v) {
  pydl_emu::on_atomic(p, sizeof(unsigned), __builtin_return_address(0));
  const unsigned old = *p;
  *p = old >= v ? 0u : old + 1u;
  return old;
}
PYDL_EMU_FN unsigned atomicDec(unsigned* p, unsigned v) {
  pydl_emu::on_atomic(p, sizeof(unsigned), __builtin_return_address(0));
  const unsigned old = *p;
  *p = (old == 0u || old > v) ? v : old - 1u;
  return old;
}
template <typename T>
PYDL_EMU_FN T atomicCAS(T* p, typename pydl_emu::ident<T>::type cmp, typename pydl_emu::ident<T>::type v) {
  static_assert(std::is_integral<T>::value, "atomicCAS exists for integer types only");
  pydl_emu::on_atomic(p, sizeof(T), __builtin_return_address(0));
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// ---- math and bit intrinsics -----------------------------------------------------------------------------------
PYDL_EMU_FN int __popc(unsigned x) { return __builtin_popcount(x); }
PYDL_EMU_FN int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
PYDL_EMU_FN int __ffs(int x) { return __builtin_ffs(x); }
PYDL_EMU_FN int __ffsll(long long x) { return __builtin_ffsll(x); }
PYDL_EMU_FN int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
PYDL_EMU_FN int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
PYDL_EMU_FN unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
PYDL_EMU_FN float __expf(float x) { return std::exp(x); }
PYDL_EMU_FN float __logf(float x) { return std::log(x); }
PYDL_EMU_FN float __fdividef(float a, float b) { return a / b; }
PYDL_EMU_FN float __frcp_rn(float a) { return 1.0f / a; }
PYDL_EMU_FN float __fdiv_rn(float a, float b) { return a / b; }
PYDL_EMU_FN float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
PYDL_EMU_FN double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
PYDL_EMU_FN float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
PYDL_EMU_FN float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
PYDL_EMU_FN double rsqrt(double x) { return 1.0 / std::sqrt(x); }
PYDL_EMU_FN float __int_as_float(int i) { return pydl_emu::from_bits<float>(uint64_t(uint32_t(i))); }
PYDL_EMU_FN int __float_as_int(float f) { return int(uint32_t(pydl_emu::to_bits(f))); }
PYDL_EMU_FN float __uint_as_float(unsigned i) { return pydl_emu::from_bits<float>(uint64_t(i)); }
PYDL_EMU_FN unsigned __float_as_uint(float f) { return unsigned(pydl_emu::to_bits(f)); }
PYDL_EMU_FN double __longlong_as_double(long long i) { return pydl_emu::from_bits<double>(uint64_t(i)); }
PYDL_EMU_FN long long __double_as_longlong(double d) { return (long long)pydl_emu::to_bits(d); }
template <typename T>
__attribute__((always_inline)) inline T __ldg(const T* p) { return *p; }  // not NOSAN: the load is the kernel's
PYDL_EMU_FN int min(int a, int b) { return a < b ? a : b; }
PYDL_EMU_FN int max(int a, int b) { return a > b ? a : b; }
PYDL_EMU_FN unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
PYDL_EMU_FN unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
PYDL_EMU_FN long long min(long long a, long long b) { return a < b ? a : b; }
PYDL_EMU_FN long long max(long long a, long long b) { return a > b ? a : b; }
PYDL_EMU_FN long min(long a, long b) { return a < b ? a : b; }
PYDL_EMU_FN long max(long a, long b) { return a > b ? a : b; }
PYDL_EMU_FN unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
PYDL_EMU_FN unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
PYDL_EMU_FN float min(float a, float b) { return std::fmin(a, b); }
PYDL_EMU_FN float max(float a, float b) { return std::fmax(a, b); }
PYDL_EMU_FN double min(double a, double b) { return std::fmin(a, b); }
PYDL_EMU_FN double max(double a, double b) { return std::fmax(a, b); }

// ---- runtime API: "device" memory is host memory here ----------------------------------------------------------
namespace pydl_emu {
PYDL_EMU_FN cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) st().last_error = e;
  return e;
}
}  // namespace pydl_emu
// Allocations get an untracked red zone on each side, so a small overrun lands outside every buffer (memcheck).
PYDL_EMU_FN cudaError_t cudaMalloc(void** p, size_t bytes) {
  constexpr size_t kRed = 256;
  char* raw = static_cast<char*>(std::malloc(bytes + 2 * kRed));
  if (!raw) return pydl_emu::set_error(cudaErrorMemoryAllocation);
  std::memset(raw, 0xA5, bytes + 2 * kRed);
  *p = raw + kRed;
  pydl_emu::track(*p, bytes ? bytes : 1, "cudaMalloc buffer", /*initialized=*/false);
  return cudaSuccess;
}
template <typename T>
PYDL_EMU_FN cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
PYDL_EMU_FN cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  pydl_emu::untrack(p);
  std::free(static_cast<char*>(p) - 256);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memcpy(d, s, n);
  pydl_emu::mark_written(d, n);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) {
  return cudaMemcpy(d, s, n, k);
}
PYDL_EMU_FN cudaError_t cudaMemset(void* d, int v, size_t n) {
  std::memset(d, v, n);
  pydl_emu::mark_written(d, n);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t = nullptr) { return cudaMemset(d, v, n); }
// cudaGetLastError returns the last error and resets it -- except a kernel fault (a check's finding), which is
// sticky as on a GPU: every later call reports it and every later launch fails with it, so a launcher that
// clears a refused launch and falls back (batch norm's one-pass path does) cannot hide a finding. On a GPU the
// context is then lost for good; the emulator recovers once the fault's text has been read with
// cudaGetErrorString (which is how every launcher raises it) or after pydl_emu::clear_fault() /
// cudaDeviceReset(), so one test's bug does not poison the next.
PYDL_EMU_FN cudaError_t cudaGetLastError() {
  pydl_emu::State& s = pydl_emu::st();
  const cudaError_t e = s.pending != cudaSuccess ? s.pending : s.last_error;
  s.last_error = cudaSuccess;
  return e;
}
PYDL_EMU_FN cudaError_t cudaPeekAtLastError() {
  pydl_emu::State& s = pydl_emu::st();
  return s.pending != cudaSuccess ? s.pending : s.last_error;
}
namespace pydl_emu {
// The pending kernel fault, if any (cudaSuccess if none); clear_fault() forgets it and its report.
PYDL_EMU_FN cudaError_t fault() { return st().pending; }
PYDL_EMU_FN void clear_fault() {
  st().pending = cudaSuccess;
  st().last_error = cudaSuccess;
  st().report.clear();
}
}  // namespace pydl_emu
PYDL_EMU_FN cudaError_t cudaDeviceReset() {
  pydl_emu::clear_fault();
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaDeviceSynchronize() { return pydl_emu::st().pending; }
PYDL_EMU_FN cudaError_t cudaStreamSynchronize(cudaStream_t) { return pydl_emu::st().pending; }
PYDL_EMU_FN const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
  }
  return "cudaErrorUnknown";
}
// The driver's text, followed by the emulator's report of why (the check's finding or the refused launch).
PYDL_EMU_FN const char* cudaGetErrorString(cudaError_t e) {
  const char* base = "unknown error";
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: base = "invalid argument"; break;
    case cudaErrorMemoryAllocation: base = "out of memory"; break;
    case cudaErrorInvalidConfiguration: base = "invalid configuration argument"; break;
    case cudaErrorInvalidDeviceFunction: base = "invalid device function"; break;
    case cudaErrorInvalidDevice: base = "invalid device ordinal"; break;
    case cudaErrorIllegalAddress: base = "an illegal memory access was encountered"; break;
    case cudaErrorLaunchTimeout: base = "the launch timed out and was terminated"; break;
    case cudaErrorLaunchFailure: base = "unspecified launch failure"; break;
    case cudaErrorCooperativeLaunchTooLarge: base = "too many blocks in cooperative launch"; break;
    case cudaErrorNotSupported: return "operation not supported";
  }
  static std::string text;
  pydl_emu::State& s = pydl_emu::st();
  const std::string& r = s.report;
  text = r.empty() ? std::string(base) : std::string(base) + " (" + r + ")";
  if (e == s.pending) s.pending = cudaSuccess;  // the fault has been read out: see cudaGetLastError
  return text.c_str();
}
PYDL_EMU_FN cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : pydl_emu::set_error(cudaErrorInvalidDevice); }
PYDL_EMU_FN cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev) {
  if (dev != 0) return pydl_emu::set_error(cudaErrorInvalidDevice);
  const pydl_emu::Device& d = pydl_emu::device();
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxBlockDimX: case cudaDevAttrMaxBlockDimY: *v = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *v = 64; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxGridDimY: case cudaDevAttrMaxGridDimZ: *v = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = int(d.smem_default); break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *v = 65536; break;
    case cudaDevAttrMultiProcessorCount: *v = d.sms; break;
    case cudaDevAttrComputeCapabilityMajor: *v = d.cc_major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = d.cc_minor; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = d.threads_per_sm; break;
    case cudaDevAttrL2CacheSize: *v = d.l2; break;
    case cudaDevAttrCooperativeLaunch: *v = 1; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(d.smem_optin); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = int(d.smem_per_sm); break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *v = d.regs_per_sm; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *v = d.blocks_per_sm; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *v = int(d.smem_reserved); break;
    default: return pydl_emu::set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  if (dev != 0) return pydl_emu::set_error(cudaErrorInvalidDevice);
  const pydl_emu::Device& d = pydl_emu::device();
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "%s", d.name);
  p->totalGlobalMem = size_t(80) << 30;
  p->sharedMemPerBlock = d.smem_default;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->major = d.cc_major;
  p->minor = d.cc_minor;
  p->multiProcessorCount = d.sms;
  p->l2CacheSize = d.l2;
  p->maxThreadsPerMultiProcessor = d.threads_per_sm;
  p->sharedMemPerMultiprocessor = d.smem_per_sm;
  p->regsPerMultiprocessor = d.regs_per_sm;
  p->sharedMemPerBlockOptin = d.smem_optin;
  p->reservedSharedMemPerBlock = d.smem_reserved;
  p->maxBlocksPerMultiProcessor = d.blocks_per_sm;
  p->cooperativeLaunch = 1;
  return cudaSuccess;
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaFuncSetAttribute(void (*k)(A...), cudaFuncAttribute attr, int value) {
  pydl_emu::KernelInfo& ki = pydl_emu::register_kernel(k);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) + ki.static_smem > pydl_emu::device().smem_optin) {
      pydl_emu::set_config_error(cudaErrorInvalidValue, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                                 std::to_string(value) + "): more than the device's opt-in limit of " +
                                 std::to_string(pydl_emu::device().smem_optin) + " bytes per block");
      return cudaErrorInvalidValue;
    }
    ki.max_dyn = size_t(value);
  }
  return cudaSuccess;
}
// The static shared memory of a kernel is known once it has run (the emulator allocates it lazily);
// registers are not modelled.
namespace pydl_emu {
PYDL_EMU_FN void fill_func_attributes(cudaFuncAttributes* a, const KernelInfo& ki) {
  std::memset(a, 0, sizeof *a);
  a->sharedSizeBytes = ki.static_smem;
  a->maxThreadsPerBlock = 1024;
  a->numRegs = 32;
  a->ptxVersion = a->binaryVersion = device().cc_major * 10;
  a->maxDynamicSharedSizeBytes = int(ki.max_dyn ? ki.max_dyn : device().smem_default - ki.static_smem);
}
}  // namespace pydl_emu
// The runtime API's untyped form, a kernel passed as `const void*` (as batch_norm.cu's one-pass size check
// does): the same answers, from what the emulator knows of that address.
PYDL_EMU_FN cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void* k) {
  pydl_emu::fill_func_attributes(a, pydl_emu::info(k));
  return cudaSuccess;
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, void (*k)(A...)) {
  pydl_emu::fill_func_attributes(a, pydl_emu::register_kernel(k));
  return cudaSuccess;
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void (*k)(A...), int threads,
                                                                      size_t dyn) {
  pydl_emu::KernelInfo& ki = pydl_emu::register_kernel(k);
  *n = pydl_emu::occupancy(threads, dyn + ki.static_smem);
  return cudaSuccess;
}
PYDL_EMU_FN cudaError_t cudaLaunchKernel(const void* fn, dim3 grid, dim3 block, void** args, size_t smem = 0,
                                         cudaStream_t = nullptr) {
  return pydl_emu::launch_erased(fn, grid, block, args, smem, false);
}
PYDL_EMU_FN cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                                    size_t smem = 0, cudaStream_t = nullptr) {
  return pydl_emu::launch_erased(fn, grid, block, args, smem, true);
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaLaunchKernel(void (*k)(A...), dim3 grid, dim3 block, void** args, size_t smem = 0,
                                         cudaStream_t st = nullptr) {
  pydl_emu::register_kernel(k);
  return cudaLaunchKernel(reinterpret_cast<const void*>(k), grid, block, args, smem, st);
}
template <typename... A>
PYDL_EMU_FN cudaError_t cudaLaunchCooperativeKernel(void (*k)(A...), dim3 grid, dim3 block, void** args,
                                                    size_t smem = 0, cudaStream_t st = nullptr) {
  pydl_emu::register_kernel(k);
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(k), grid, block, args, smem, st);
}

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

// ---- the memory-access hooks -----------------------------------------------------------------------------------
// GCC and Clang, given -fsanitize=thread, call these before every load and store of the instrumented code; the
// emulator defines them instead of linking the ThreadSanitizer runtime. Exactly one translation unit of a binary
// defines PYDL_EMU_DEFINE_HOOKS before including this header (cuda_emu_hooks.cpp does; the course's checker
// defines it in the learner's unit). The hooks themselves are never instrumented (PYDL_EMU_NOSAN).
#ifdef PYDL_EMU_DEFINE_HOOKS
#define PYDL_EMU_HOOK extern "C" PYDL_EMU_NOSAN __attribute__((used))
#define PYDL_EMU_RW(N)                                                                                           \
  PYDL_EMU_HOOK void __tsan_read##N(void* p) { pydl_emu::on_access(p, N, false, __builtin_return_address(0)); }   \
  PYDL_EMU_HOOK void __tsan_write##N(void* p) { pydl_emu::on_access(p, N, true, __builtin_return_address(0)); }   \
  PYDL_EMU_HOOK void __tsan_unaligned_read##N(void* p) {                                                         \
    pydl_emu::on_access(p, N, false, __builtin_return_address(0));                                                \
  }                                                                                                              \
  PYDL_EMU_HOOK void __tsan_unaligned_write##N(void* p) {                                                        \
    pydl_emu::on_access(p, N, true, __builtin_return_address(0));                                                 \
  }                                                                                                              \
  PYDL_EMU_HOOK void __tsan_volatile_read##N(void* p) {                                                          \
    pydl_emu::on_access(p, N, false, __builtin_return_address(0));                                                \
  }                                                                                                              \
  PYDL_EMU_HOOK void __tsan_volatile_write##N(void* p) {                                                         \
    pydl_emu::on_access(p, N, true, __builtin_return_address(0));                                                 \
  }
PYDL_EMU_RW(1)
PYDL_EMU_RW(2)
PYDL_EMU_RW(4)
PYDL_EMU_RW(8)
PYDL_EMU_RW(16)
#undef PYDL_EMU_RW
PYDL_EMU_HOOK void __tsan_read_range(void* p, unsigned long n) {
  pydl_emu::on_access(p, n, false, __builtin_return_address(0));
}
PYDL_EMU_HOOK void __tsan_write_range(void* p, unsigned long n) {
  pydl_emu::on_access(p, n, true, __builtin_return_address(0));
}
// Clang turns memcpy/memset/memmove in instrumented code into these: check both ranges, then do it.
PYDL_EMU_HOOK void* __tsan_memcpy(void* d, const void* s, unsigned long n) {
  pydl_emu::on_access(s, n, false, __builtin_return_address(0));
  pydl_emu::on_access(d, n, true, __builtin_return_address(0));
  return std::memcpy(d, s, n);
}
PYDL_EMU_HOOK void* __tsan_memmove(void* d, const void* s, unsigned long n) {
  pydl_emu::on_access(s, n, false, __builtin_return_address(0));
  pydl_emu::on_access(d, n, true, __builtin_return_address(0));
  return std::memmove(d, s, n);
}
PYDL_EMU_HOOK void* __tsan_memset(void* d, int v, unsigned long n) {
  pydl_emu::on_access(d, n, true, __builtin_return_address(0));
  return std::memset(d, v, n);
}
PYDL_EMU_HOOK void __tsan_func_entry(void*) {}
PYDL_EMU_HOOK void __tsan_func_exit() {}
PYDL_EMU_HOOK void __tsan_init() {}
PYDL_EMU_HOOK void __tsan_vptr_update(void** p, void*) { pydl_emu::on_access(p, sizeof(void*), true, __builtin_return_address(0)); }
PYDL_EMU_HOOK void __tsan_vptr_read(void** p) { pydl_emu::on_access(p, sizeof(void*), false, __builtin_return_address(0)); }
// std::atomic and static-local guards in instrumented code become these: do the operation (the fibers of the
// emulator never run in parallel, so sequential consistency is trivially kept).
#define PYDL_EMU_TSAN_ATOMIC(N, T)                                                                               \
  PYDL_EMU_HOOK T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  PYDL_EMU_HOOK void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  PYDL_EMU_HOOK T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                          \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                          \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                             \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                        \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  PYDL_EMU_HOOK int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {              \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                       \
  }                                                                                                              \
  PYDL_EMU_HOOK int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
  }                                                                                                              \
  PYDL_EMU_HOOK T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                    \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                             \
    return c;                                                                                                    \
  }
PYDL_EMU_TSAN_ATOMIC(8, unsigned char)
PYDL_EMU_TSAN_ATOMIC(16, unsigned short)
PYDL_EMU_TSAN_ATOMIC(32, unsigned int)
PYDL_EMU_TSAN_ATOMIC(64, unsigned long long)
#undef PYDL_EMU_TSAN_ATOMIC
PYDL_EMU_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
PYDL_EMU_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#undef PYDL_EMU_HOOK
#endif  // PYDL_EMU_DEFINE_HOOKS
