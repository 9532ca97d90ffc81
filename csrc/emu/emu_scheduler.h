// emu_scheduler.h -- part of the CUDA emulator (cuda_emu.h includes every part, in order, and is the one header to
// include). Fibers and the scheduler: a random runnable fiber runs until a barrier, a warp primitive, its end or a
// preemption; barriers release (and synccheck judges them) when every thread they name has arrived.
#pragma once

#include "emu_checks.h"

namespace pydl_emu {

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

}  // namespace pydl_emu
