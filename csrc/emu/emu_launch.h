// emu_launch.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). A launch: the driver's configuration checks, the blocks in a random order (all resident at once for a
// cooperative launch), and the ways a kernel is called (<<<>>>, a deduced template, an erased `const void*`).
#pragma once

#include "emu_scheduler.h"

namespace pydl_emu {

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

}  // namespace pydl_emu
