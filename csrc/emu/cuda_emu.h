// cuda_emu.h -- run a CUDA kernel's source as plain C++ on the CPU, to check its *logic* without a GPU.
//
// How the CUDA execution model is emulated:
//   * a launch runs every block of the grid, one block at a time, in a shuffled order (CUDA promises no
//     order between blocks; code that relies on one fails here too);
//   * the threads of a block are fibers (ucontext): each runs until it reaches __syncthreads(), a warp
//     primitive (__shfl_*_sync, __ballot_sync, __syncwarp, ...) or its end, then the next one runs. A
//     barrier releases when every live thread of the block (of the warp, for warp primitives) has reached
//     it; if threads wait at different barriers forever, the emulation reports a deadlock;
//   * __shared__ variables live in a per-block arena that is filled with 0xFF bytes (NaN for float, -1 for
//     int) before each block: reading shared memory nobody wrote shows up as garbage, as on a GPU;
//   * warp shuffles go through a per-warp exchange buffer between two warp barriers;
//   * atomics are plain read-modify-writes (only one thread runs at a time, so they are trivially atomic).
//
// What it cannot show: real concurrency. A missing atomicAdd, or a read racing with another block's write,
// gives the right answer here because threads never run at the same time. Missing __syncthreads() often
// *does* show (a thread runs ahead to the end before the others have written anything), but not always.
// The checker runs the kernel on a real GPU when one is present; that is the level that settles races.
//
// The checker rewrites three CUDA-only syntaxes before compiling with g++ (line numbers are kept):
//   kernel<<<grid, block[, smem[, stream]]>>>(args)   ->  pydl_emu::Launcher(grid, block, ...).bind(kernel)(args)
//   __shared__ T name[N]...;                           ->  auto& name = pydl_emu::shared<T[N]...>(key);
//   extern __shared__ T name[];                        ->  T* name = pydl_emu::dynamic_shared<T>();
#pragma once

#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700  // macOS hides the (deprecated, still working) ucontext API without it
#endif
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static  // only if the checker's rewrite missed a declaration
#define __constant__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

typedef int cudaError_t;
typedef void* cudaStream_t;
enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

namespace pydl_emu {

constexpr int kWarp = 32;
constexpr size_t kStack = 64 * 1024;
constexpr size_t kStaticShared = 48 * 1024;

enum FiberState { kRunnable = 0, kAtBlockBarrier = 1, kAtWarpBarrier = 2, kDone = 3 };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear = 0;
  int state = kRunnable;
  unsigned warp_mask = 0;
};

struct State {
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  int current = -1;
  ucontext_t sched;
  std::function<void()> body;
  std::vector<unsigned char> arena;
  size_t arena_used = 0, dyn_bytes = 0;
  std::map<long, size_t> shared_at;
  std::vector<uint64_t> exchange;  // per warp, 32 slots
  cudaError_t last_error = cudaSuccess;
  unsigned long long launches = 0;
};

inline State& st() {
  static State s;
  return s;
}

inline Fiber& me() {
  State& s = st();
  if (s.current < 0) {
    std::fprintf(stderr, "emulation: a device function (threadIdx, __syncthreads, ...) was used outside a kernel\n");
    std::exit(5);
  }
  return s.fibers[s.current];
}

inline void yield_to_scheduler() {
  Fiber& f = me();
  swapcontext(&f.ctx, &st().sched);
}

inline void fiber_entry() {
  st().body();
  st().fibers[st().current].state = kDone;
  // returning resumes uc_link: the scheduler
}

[[noreturn]] inline void deadlock(const char* why) {
  State& s = st();
  int at_block = 0, at_warp = 0, done = 0;
  for (auto& f : s.fibers) {
    at_block += f.state == kAtBlockBarrier;
    at_warp += f.state == kAtWarpBarrier;
    done += f.state == kDone;
  }
  std::fprintf(stderr,
               "emulation: DEADLOCK in block (%u,%u,%u): %d thread(s) wait at __syncthreads(), %d at a warp "
               "primitive (__shfl_*_sync/__syncwarp/...), %d finished. %s\n",
               s.block_idx.x, s.block_idx.y, s.block_idx.z, at_block, at_warp, done, why);
  std::exit(3);
}

// Run one block to completion.
inline void run_block(bool reverse) {
  State& s = st();
  const int n = int(s.fibers.size());
  std::fill(s.arena.begin(), s.arena.end(), 0xFF);
  s.shared_at.clear();
  s.arena_used = s.dyn_bytes;
  for (int i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
    f.state = kRunnable;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = s.stacks.data() + size_t(i) * kStack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &s.sched;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  const int nwarps = (n + kWarp - 1) / kWarp;
  for (;;) {
    bool ran = false;
    for (int k = 0; k < n; ++k) {
      const int i = reverse ? n - 1 - k : k;
      if (s.fibers[i].state != kRunnable) continue;
      s.current = i;
      swapcontext(&s.sched, &s.fibers[i].ctx);
      s.current = -1;
      ran = true;
    }
    int live = 0, at_block = 0;
    for (auto& f : s.fibers) {
      live += f.state != kDone;
      at_block += f.state == kAtBlockBarrier;
    }
    if (live == 0) return;
    bool released = false;
    // warp barriers: every live lane of the warp that the mask names has arrived
    for (int w = 0; w < nwarps; ++w) {
      int waiting = 0, ready = 1;
      unsigned mask = 0;
      for (int l = 0; l < kWarp && w * kWarp + l < n; ++l) {
        Fiber& f = s.fibers[w * kWarp + l];
        if (f.state == kAtWarpBarrier) {
          ++waiting;
          mask |= f.warp_mask;
        }
      }
      if (!waiting) continue;
      for (int l = 0; l < kWarp && w * kWarp + l < n; ++l) {
        Fiber& f = s.fibers[w * kWarp + l];
        if ((mask >> l & 1u) && f.state != kDone && f.state != kAtWarpBarrier) ready = 0;
      }
      if (ready) {
        for (int l = 0; l < kWarp && w * kWarp + l < n; ++l) {
          Fiber& f = s.fibers[w * kWarp + l];
          if (f.state == kAtWarpBarrier) f.state = kRunnable;
        }
        released = true;
      }
    }
    if (!released && at_block == live) {  // __syncthreads: every live thread has arrived
      for (auto& f : s.fibers)
        if (f.state == kAtBlockBarrier) f.state = kRunnable;
      released = true;
    }
    if (!released && !ran) {
      deadlock("In CUDA every thread of a block must reach the same __syncthreads() (do not put it inside "
               "an `if` that only some threads take), and every lane named in a warp primitive's mask must "
               "call it.");
    }
  }
}

inline void launch(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  State& s = st();
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "emulation: launch with grid (%u,%u,%u) and block (%u,%u,%u) is invalid on a GPU "
                         "(at most 1024 threads per block, no zero dimensions): the kernel did not run\n",
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    s.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const unsigned long long total = threads * grid.x * grid.y * grid.z;
  if (total > (1ull << 22)) {
    std::fprintf(stderr, "emulation: a grid of %u x %u x %u blocks of %llu threads (%llu threads in all) is far "
                         "more than these test sizes need -- check how the grid size is computed\n",
                 grid.x, grid.y, grid.z, threads, total);
    std::exit(6);
  }
  if (smem > kStaticShared) {
    std::fprintf(stderr, "emulation: %zu bytes of dynamic shared memory asked for; a GPU allows 48 KB "
                         "without opting in\n", smem);
    s.last_error = cudaErrorInvalidValue;
    return;
  }
  s.grid = grid;
  s.block = block;
  s.body = body;
  s.fibers.assign(size_t(threads), Fiber());
  if (s.stacks.size() < threads * kStack) s.stacks.resize(threads * kStack);
  s.arena.assign(kStaticShared + smem + 64, 0xFF);
  s.dyn_bytes = (smem + 15) / 16 * 16;
  s.exchange.assign(((threads + kWarp - 1) / kWarp) * kWarp, 0);
  int i = 0;
  for (unsigned z = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++i) {
        s.fibers[i].tid = uint3{x, y, z};
        s.fibers[i].linear = i;
      }
  std::vector<uint3> order;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
  const char* seed_env = std::getenv("PYDL_EMU_SEED");
  const unsigned seed = seed_env ? unsigned(std::atoi(seed_env)) : 0u;
  std::mt19937 rng(seed * 7919u + unsigned(s.launches));
  std::shuffle(order.begin(), order.end(), rng);
  const bool reverse = (seed % 2) == 1;  // odd seeds run each block's threads last-to-first
  ++s.launches;
  for (const uint3& b : order) {
    s.block_idx = b;
    run_block(reverse);
  }
}

struct Launcher {
  dim3 grid, block;
  size_t smem;
  Launcher(dim3 g, dim3 b, size_t sm = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(sm) {}
  template <typename K>
  auto bind(K kernel) {
    Launcher self = *this;
    return [self, kernel](auto... args) { launch(self.grid, self.block, self.smem, [&]() { kernel(args...); }); };
  }
};

template <typename T>
T& shared(long key) {
  State& s = st();
  auto it = s.shared_at.find(key);
  if (it == s.shared_at.end()) {
    size_t at = (s.arena_used + alignof(T) - 1) / alignof(T) * alignof(T);
    if (at + sizeof(T) > s.arena.size()) {
      std::fprintf(stderr, "emulation: more than 48 KB of __shared__ memory in one block\n");
      std::exit(5);
    }
    s.arena_used = at + sizeof(T);
    it = s.shared_at.emplace(key, at).first;
  }
  return *reinterpret_cast<T*>(s.arena.data() + it->second);
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(st().arena.data());
}

inline void warp_barrier(unsigned mask) {
  Fiber& f = me();
  f.state = kAtWarpBarrier;
  f.warp_mask = mask;
  yield_to_scheduler();
}

inline int lane() { return me().linear % kWarp; }
inline int warp() { return me().linear / kWarp; }

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Every lane deposits `v`, then reads the slot of lane src(lane) (or keeps its own value if src is outside).
template <typename T, typename F>
inline T exchange(unsigned mask, T v, F src_of) {
  State& s = st();
  const int l = lane(), w = warp();
  s.exchange[w * kWarp + l] = to_bits(v);
  warp_barrier(mask);
  const int src = src_of(l);
  T r = v;
  const int n = int(s.fibers.size());
  if (src >= 0 && src < kWarp && w * kWarp + src < n) r = from_bits<T>(s.exchange[w * kWarp + src]);
  warp_barrier(mask);
  return r;
}

}  // namespace pydl_emu

// ---- built-in variables -------------------------------------------------------------------------------
#define threadIdx (pydl_emu::me().tid)
#define blockIdx (pydl_emu::st().block_idx)
#define blockDim (pydl_emu::st().block)
#define gridDim (pydl_emu::st().grid)
constexpr int warpSize = 32;

// ---- synchronisation ------------------------------------------------------------------------------------
inline void __syncthreads() {
  pydl_emu::me().state = pydl_emu::kAtBlockBarrier;
  pydl_emu::yield_to_scheduler();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { pydl_emu::warp_barrier(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- warp primitives ---------------------------------------------------------------------------------
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return pydl_emu::exchange(mask, v, [&](int l) { return (l & ~(width - 1)) + (src % width); });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return pydl_emu::exchange(mask, v, [&](int l) {
    const int base = l & ~(width - 1);
    return l + int(delta) < base + width ? l + int(delta) : l;
  });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return pydl_emu::exchange(mask, v, [&](int l) {
    const int base = l & ~(width - 1);
    return l - int(delta) >= base ? l - int(delta) : l;
  });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return pydl_emu::exchange(mask, v, [&](int l) {
    const int base = l & ~(width - 1);
    const int s = l ^ lane_mask;
    return s >= base && s < base + width ? s : l;
  });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  pydl_emu::State& s = pydl_emu::st();
  const int l = pydl_emu::lane(), w = pydl_emu::warp();
  s.exchange[w * 32 + l] = pred ? 1 : 0;
  pydl_emu::warp_barrier(mask);
  unsigned r = 0;
  const int n = int(s.fibers.size());
  for (int i = 0; i < 32 && w * 32 + i < n; ++i)
    if ((mask >> i & 1u) && s.fibers[w * 32 + i].state != pydl_emu::kDone && s.exchange[w * 32 + i]) r |= 1u << i;
  pydl_emu::warp_barrier(mask);
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, !pred) == 0; }
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T v) {
  pydl_emu::State& s = pydl_emu::st();
  const int l = pydl_emu::lane(), w = pydl_emu::warp();
  const uint64_t mine = pydl_emu::to_bits(v);
  s.exchange[w * 32 + l] = mine;
  pydl_emu::warp_barrier(mask);
  unsigned r = 0;
  const int n = int(s.fibers.size());
  for (int i = 0; i < 32 && w * 32 + i < n; ++i)
    if ((mask >> i & 1u) && s.exchange[w * 32 + i] == mine) r |= 1u << i;
  pydl_emu::warp_barrier(mask);
  return r;
}
inline unsigned __activemask() { return 0xffffffffu; }

// ---- atomics (one thread runs at a time: a plain read-modify-write is atomic here) ---------------------
// The value's type is taken from the pointer (not deduced from `v`), so atomicAdd(&unsigned_counter, 1) converts
// 1 like CUDA's overloads do.
namespace pydl_emu {
template <typename T>
struct ident {
  using type = T;
};
}  // namespace pydl_emu
template <typename T>
inline T atomicAdd(T* p, typename pydl_emu::ident<T>::type v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicSub(T* p, typename pydl_emu::ident<T>::type v) {
  T old = *p;
  *p = old - v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, typename pydl_emu::ident<T>::type v) {
  T old = *p;
  *p = old > v ? old : v;
  return old;
}
template <typename T>
inline T atomicMin(T* p, typename pydl_emu::ident<T>::type v) {
  T old = *p;
  *p = old < v ? old : v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, typename pydl_emu::ident<T>::type v) {
  T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, typename pydl_emu::ident<T>::type cmp, typename pydl_emu::ident<T>::type v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// ---- math and bit intrinsics -----------------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __int_as_float(int i) { return pydl_emu::from_bits<float>(uint64_t(uint32_t(i))); }
inline int __float_as_int(float f) { return int(uint32_t(pydl_emu::to_bits(f))); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- runtime API: "device" memory is host memory here -----------------------------------------------------
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <typename T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) {
  return cudaMemcpy(d, s, n, k);
}
inline cudaError_t cudaMemset(void* d, int v, size_t n) {
  std::memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t = nullptr) { return cudaMemset(d, v, n); }
inline cudaError_t cudaGetLastError() {
  cudaError_t e = pydl_emu::st().last_error;
  pydl_emu::st().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return pydl_emu::st().last_error; }
inline cudaError_t cudaDeviceSynchronize() { return pydl_emu::st().last_error; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return pydl_emu::st().last_error; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}
