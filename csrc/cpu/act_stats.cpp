// act_stats on the CPU: count, mean, variance, min, max, near-zero count, NaN/Inf counts and a fixed-bin
// histogram of a tensor -- whole or per channel -- in ONE read of the input.
//
// How one read gives all of it: the tensor is cut into chunks of kChunk elements that fit in L1 (half and
// bfloat16 chunks are converted once into a float buffer); everything after the first touch is in L1:
//   pass 1 (vectorised): sum, finite count, min, max, near-zero count, and the histogram slot of every value,
//                        first assuming every value finite (no per-value test), redone carefully only for a
//                        chunk that holds NaN/Inf or overflows;
//   (variance)           sums of (v - K) and (v - K)^2 with K the running mean of the chunks before; the
//                        first chunk of a task, with no K yet, takes a second pass over L1 instead;
//   scatter (scalar):    histogram increments, spread over kSub = 8 sub-histograms -- post-ReLU data piles onto
//                        one bin, and back-to-back increments of one counter wait on each other (store-to-load
//                        forwarding); 8 copies let 8 increments be in flight. With few bins, one increment per
//                        pair of values instead (scatter_pairs).
// Chunks are merged with Chan et al.'s parallel formula (mean/M2 of two sets), in double.
//
// "Vectorised" without -ffast-math: a float sum only vectorises if the compiler may reorder it, which by
// default it may not. `#pragma omp simd reduction(...)` gives it that permission for exactly these loops:
// each SIMD lane keeps its own partial sum, and the lanes are added at the end. The result is deterministic
// for a given build and thread count.
//
// Bin rule (identical in every backend, and torch.histc's on CPU): in the accumulator type (float, or double
// for double input), t = ((x - lo) * bins) / (hi - lo); bin = min(int(t), bins - 1) for lo <= x <= hi, so
// x == hi lands in the last bin. Finite x < lo / x > hi count as below / above; NaN, +Inf, -Inf are counted
// on their own. Mean, variance, min and max are over the finite values.
#include <torch/library.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "common.h"
#include "moments.h"
#include "schemas.h"

namespace pydl {
namespace {

constexpr int64_t kChunk = 2048;     // elements per L1-resident chunk (8 KB of float)
constexpr int64_t kTaskElems = 1 << 16;  // elements per parallel task (enough to amortise a task)
constexpr int kSub = 8;               // sub-histograms the scatter rotates through (measured: 8 beat 4 by ~40%)
constexpr int kPairCopies = 4;        // pair tables the pair scatter rotates through
constexpr int64_t kPairMaxSlots = 48; // pair scatter only while kPairCopies tables of NB^2 uint16 stay in L1 (18 KB)
// A pair table counts at most the pairs of one task (its counts are drained at the task's end) in uint16.
static_assert(kTaskElems / 2 <= 65535, "a task's pairs must fit a uint16 pair counter");

// Statistics of a set of finite values; merge() is Chan, Golub & LeVeque's pairwise update.
struct Moments {
  int64_t n = 0;
  double mean = 0.0, m2 = 0.0;
  double mn = std::numeric_limits<double>::infinity(), mx = -std::numeric_limits<double>::infinity();

  void merge(int64_t nb, double mean_b, double m2_b, double mn_b, double mx_b) {
    if (nb == 0) return;
    chan_merge(n, mean, m2, nb, mean_b, m2_b);
    mn = std::min(mn, mn_b);
    mx = std::max(mx, mx_b);
  }
  void merge(const Moments& o) { merge(o.n, o.mean, o.m2, o.mn, o.mx); }
};

template <typename acc_t>
struct Binning {
  acc_t lo, hi, width, nb, nbm1, eps;
  int32_t bins;

  Binning(int64_t bins_, double lo_, double hi_, double eps_)
      : lo(acc_t(lo_)), hi(acc_t(hi_)), width(acc_t(hi_) - acc_t(lo_)), nb(acc_t(bins_)), nbm1(acc_t(bins_ - 1)),
        eps(acc_t(eps_)), bins(int32_t(bins_)) {}
};

// The bin rule for a value taken to be finite, branch-free so that the loops calling it vectorise: a bin for
// every value, overwritten for the out-of-range ones. The clamps keep the float->int cast defined for any
// input (NaN compares false and becomes nbm1). Its arguments are locals, not a Binning's members: a store
// through an int32 pointer that might alias a member would force a reload per element.
template <typename acc_t>
inline int32_t finite_slot(acc_t v, acc_t lo, acc_t hi, acc_t width, acc_t nb, acc_t nbm1, int32_t bins) {
  acc_t t = ((v - lo) * nb) / width;
  t = t < acc_t(0) ? acc_t(0) : t;
  t = t < nbm1 ? t : nbm1;
  int32_t sl = static_cast<int32_t>(t);
  sl = v < lo ? bins + kBelow : sl;
  return v > hi ? bins + kAbove : sl;
}

// Pass 1 over a chunk: the histogram slot of every value and the chunk's shifted sums, finite count, min,
// max and near-zero count. Two instances:
//   CAREFUL = false, for the common case where every value is finite: no per-value finiteness test. Each
//     test costs masked selects on five accumulators, and the measured price of that bookkeeping (2.6x this
//     loop's time, single thread, 64x64x32x32 fp32) was more than the histogram scatter's. A non-finite
//     value cannot hide here: it makes s2, a sum of squares, inf or NaN, and then the caller redoes the
//     chunk carefully. So does a finite chunk whose sums overflow, which needed the careful pass anyway.
//     Slots of a chunk to be redone may hold anything (any valid index: see finite_slot).
//   CAREFUL = true: NaN, +-Inf get their own slots and stay out of the sums, min and max.
template <typename acc_t>
struct ChunkSums {
  acc_t s, s2, mn, mx;
  int32_t nf, nz;  // a chunk has at most kChunk values
};

template <bool CAREFUL, typename acc_t>
inline ChunkSums<acc_t> chunk_pass(const acc_t* __restrict__ vals, int64_t len, const Binning<acc_t>& b, acc_t K,
                                   int32_t* __restrict__ slots) {
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  const acc_t lo = b.lo, hi = b.hi, width = b.width, nb = b.nb, nbm1 = b.nbm1, eps = b.eps;
  const int32_t bins = b.bins;
  acc_t s = 0, s2 = 0, mn = inf, mx = -inf;
  int32_t nf = 0, nzc = 0;
#pragma omp simd reduction(+ : s, s2, nf, nzc) reduction(min : mn) reduction(max : mx)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t v = vals[i];
    int32_t sl = finite_slot(v, lo, hi, width, nb, nbm1, bins);
    acc_t d = v - K, vmin = v, vmax = v;
    if constexpr (CAREFUL) {
      sl = v != v ? bins + kNaN : sl;
      sl = v == inf ? bins + kPosInf : sl;
      sl = v == -inf ? bins + kNegInf : sl;
      const bool fin = (v - v) == acc_t(0);  // false for NaN and +-Inf
      d = fin ? d : acc_t(0);
      vmin = fin ? v : inf;
      vmax = fin ? v : -inf;
      nf += fin;
    }
    slots[i] = sl;
    s += d;
    s2 += d * d;
    mn = std::min(mn, vmin);
    mx = std::max(mx, vmax);
    nzc += std::abs(v) <= eps;  // NaN compares false
  }
  return {s, s2, mn, mx, CAREFUL ? nf : int32_t(len), nzc};
}

// Pass 1 (+ pass 2) over an L1-resident buffer of `len` values; merges the chunk's moments into `mom`, adds
// its near-zero count to `nz` and fills `slots`. Every loop here is a plain loop over locals and __restrict__
// pointers: one int32 store through a pointer that *might* alias a member of `b` (say b.bins) forces a reload
// per element and kills vectorisation, so the binning constants are copied into locals first.
//
// `omp simd reduction` lets the compiler split each sum into vector lanes (and add the lanes at the end)
// without -ffast-math; no && / || inside: short-circuit operators are control flow, which stops it.
//
// Variance without a second pass: sums of d = v - K and d*d, shifted by K = the mean of the chunks seen so
// far. With K near the mean, s2 - s*s/n does not cancel catastrophically (it would with K = 0 when
// |mean| >> std). The first chunk of a task has no K yet: it takes a second pass over L1 instead.
template <typename acc_t>
inline void chunk_stats(const acc_t* __restrict__ vals, int64_t len, const Binning<acc_t>& b,
                        int32_t* __restrict__ slots, Moments& mom, int64_t& nz) {
  const bool shifted = mom.n > 0;
  const acc_t K = shifted ? acc_t(mom.mean) : acc_t(0);
  ChunkSums<acc_t> c = chunk_pass<false>(vals, len, b, K, slots);
  const bool all_finite = std::isfinite(c.s) && std::isfinite(c.s2);
  if (!all_finite) c = chunk_pass<true>(vals, len, b, K, slots);
  const acc_t s = c.s, s2 = c.s2, mn = c.mn, mx = c.mx;
  const int32_t nf = c.nf;
  nz += c.nz;
  if (nf == 0) return;
  if (!(std::isfinite(s) && std::isfinite(s2))) {
    // Finite values whose sums overflow the accumulator (float32 data beyond ~1e17 with spread, near 1e35
    // without): the fast sums above are inf or inf - inf = NaN. Redo this chunk in double: float32 values
    // sum there without overflow (and a constant chunk's mean comes out exact, its M2 0); float64 values
    // near their maximum are averaged pre-scaled. An M2 beyond the range then is inf, which is the truth.
    double mean = 0.0, m2 = 0.0;
    if constexpr (std::is_same_v<acc_t, float>) {
      for (int64_t i = 0; i < len; ++i)
        if ((vals[i] - vals[i]) == acc_t(0)) mean += double(vals[i]);
      mean /= double(nf);
    } else {
      const double inv = 1.0 / double(nf);
      for (int64_t i = 0; i < len; ++i)
        if ((vals[i] - vals[i]) == acc_t(0)) mean += double(vals[i]) * inv;
    }
    for (int64_t i = 0; i < len; ++i)
      if ((vals[i] - vals[i]) == acc_t(0)) m2 += (double(vals[i]) - mean) * (double(vals[i]) - mean);
    mom.merge(nf, mean, m2, double(mn), double(mx));
    return;
  }
  if (shifted) {
    const acc_t ds = s / acc_t(nf);
    const acc_t m2 = std::max(s2 - s * ds, acc_t(0));
    mom.merge(nf, double(K + ds), double(m2), double(mn), double(mx));
    return;
  }
  const acc_t mean = s / acc_t(nf);  // K = 0 here
  acc_t m2 = 0;
  if (all_finite) {
#pragma omp simd reduction(+ : m2)
    for (int64_t i = 0; i < len; ++i) m2 += (vals[i] - mean) * (vals[i] - mean);
  } else {
#pragma omp simd reduction(+ : m2)
    for (int64_t i = 0; i < len; ++i) {
      const acc_t v = vals[i];
      const acc_t d = ((v - v) == acc_t(0)) ? v - mean : acc_t(0);
      m2 += d * d;
    }
  }
  mom.merge(nf, double(mean), double(m2), double(mn), double(mx));
}

// ---- The scatter: slots -> counts ---------------------------------------------------------------------
// One increment per value, into kSub sub-histograms in turn: post-ReLU data piles onto one bin (signed data
// onto "below"), and back-to-back increments of one counter wait on each other (store-to-load forwarding);
// kSub copies let kSub increments be in flight.
inline void scatter_singles(const int32_t* __restrict__ slots, int64_t len, int32_t* __restrict__ sub, int64_t NB) {
  int64_t i = 0;
  for (; i + kSub <= len; i += kSub) {  // written out: a loop over k here was not unrolled
    ++sub[slots[i]];
    ++sub[NB + slots[i + 1]];
    ++sub[2 * NB + slots[i + 2]];
    ++sub[3 * NB + slots[i + 3]];
    ++sub[4 * NB + slots[i + 4]];
    ++sub[5 * NB + slots[i + 5]];
    ++sub[6 * NB + slots[i + 6]];
    ++sub[7 * NB + slots[i + 7]];
  }
  for (; i < len; ++i) ++sub[slots[i]];
}

// With few slots, one increment per PAIR of values: (a, b) counts in an NB x NB table, whose row and column
// sums give the histogram back at the end of a task (a value at the first place of a pair is counted by
// its row, at the second by its column). Half the read-modify-writes; the pair indices are one vectorised
// pass over slots. Measured on the chunk loop (one thread, post-ReLU and signed 64x64x32x32 fp32): 0.46 ->
// 0.41 ns/value. uint16 counters keep kPairCopies tables in L1. An odd last value goes to `sub`.
inline void scatter_pairs(const int32_t* __restrict__ slots, int64_t len, int32_t* __restrict__ pidx,
                          uint16_t* __restrict__ tab, int32_t* __restrict__ sub, int64_t NB) {
  const int64_t half = len / 2, P = NB * NB;
  const int32_t nb32 = int32_t(NB);
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) pidx[i] = slots[2 * i] * nb32 + slots[2 * i + 1];
  int64_t i = 0;
  for (; i + kPairCopies <= half; i += kPairCopies) {
    ++tab[pidx[i]];
    ++tab[P + pidx[i + 1]];
    ++tab[2 * P + pidx[i + 2]];
    ++tab[3 * P + pidx[i + 3]];
  }
  for (; i < half; ++i) ++tab[pidx[i]];
  if (len % 2) ++sub[slots[len - 1]];
}

// The pair tables drain in two steps. After each task (its pairs may fill a uint16 counter): the kPairCopies
// uint16 tables are added, element by element, into one uint32 table of the thread -- one vectorised pass,
// ~0.2 us at NB = 45. Only when the thread moves to another group, might overflow uint32, or ends: that
// table's row and column sums go to the int64 histogram (drain_pairs32, the 1.7 us part, once per thread
// instead of once per task). Counts are integers: where and when they are added changes no result.
inline void fold_pairs(uint16_t* __restrict__ tab, int64_t NB, uint32_t* __restrict__ tab32) {
  const int64_t P = NB * NB;
#pragma omp simd
  for (int64_t i = 0; i < P; ++i) {
    uint32_t acc = tab32[i];
    for (int k = 0; k < kPairCopies; ++k) acc += tab[k * P + i];
    tab32[i] = acc;
  }
  std::fill(tab, tab + kPairCopies * P, uint16_t(0));
}

// Adds the uint32 pair table's counts to the histogram h (NB slots) and clears the table.
inline void drain_pairs32(uint32_t* __restrict__ tab32, int64_t NB, int64_t* __restrict__ h) {
  for (int64_t a = 0; a < NB; ++a) {
    const uint32_t* r = tab32 + a * NB;
    int64_t row = 0;
    for (int64_t b = 0; b < NB; ++b) {
      row += r[b];
      h[b] += r[b];
    }
    h[a] += row;
  }
  std::fill(tab32, tab32 + NB * NB, uint32_t(0));
}

// ---- Layout A: groups of contiguous-or-strided spans -------------------------------------------------
// Group g's elements are x[o*so + g*sg + i*si] for o < outer, i < inner. Covers the whole tensor (G = 1,
// one span) and per-channel NCHW (outer = N, inner = H*W, si = 1).
struct Task {
  int64_t g, o0, o1, i0, i1;
};

// Splits tasks [0, T) into at most `parts` contiguous runs of about equal work (values): run p is tasks
// [r[p], r[p + 1]). Each boundary is the task edge nearest to its share of the total.
inline std::vector<int64_t> balanced_runs(const std::vector<Task>& tasks, int64_t parts) {
  const int64_t T = int64_t(tasks.size());
  if (T == 0) return {0};  // no runs
  parts = std::max<int64_t>(1, std::min(parts, T));
  std::vector<int64_t> cum(T + 1, 0);  // cum[t]: values in tasks before t
  for (int64_t t = 0; t < T; ++t) cum[t + 1] = cum[t] + (tasks[t].o1 - tasks[t].o0) * (tasks[t].i1 - tasks[t].i0);
  std::vector<int64_t> r{0};
  for (int64_t p = 1; p < parts; ++p) {
    const double target = double(cum[T]) * double(p) / double(parts);
    int64_t t = std::lower_bound(cum.begin(), cum.end(), int64_t(target)) - cum.begin();  // cum[t] >= target
    if (t > 0 && target - double(cum[t - 1]) < double(cum[t]) - target) --t;
    t = std::min(std::max(t, r.back() + 1), T - (parts - p));  // every run keeps at least one task
    r.push_back(t);
  }
  r.push_back(T);
  return r;
}

template <typename scalar_t>
void run_spans(const scalar_t* x, int64_t outer, int64_t G, int64_t inner, int64_t so, int64_t sg, int64_t si,
               const Binning<at::opmath_type<scalar_t>>& b, double* fs_out, int64_t* cnt_out, int64_t* hist_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t NB = b.bins + kNumExtra;
  // Pairs pay on a task with enough values: draining the tables costs about what pairing saves on 16 NB^2
  // values (measured at NB = 45: 1.7 us per drain, 0.05 ns saved per value), so ask for twice that.
  const int64_t pair_min_values = 32 * NB * NB;
  bool pairs = false;  // does any task use pair tables (then the threads allocate them)
  std::vector<Task> tasks;
  if (inner >= kTaskElems) {
    for (int64_t g = 0; g < G; ++g)
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; i += kTaskElems) tasks.push_back({g, o, o + 1, i, std::min(inner, i + kTaskElems)});
  } else if (inner > 0) {
    const int64_t k = std::max<int64_t>(1, kTaskElems / inner);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t o = 0; o < outer; o += k) tasks.push_back({g, o, std::min(outer, o + k), 0, inner});
  }
  const int64_t T = int64_t(tasks.size());
  if (NB <= kPairMaxSlots)
    for (const Task& tk : tasks) pairs = pairs || (tk.o1 - tk.o0) * (tk.i1 - tk.i0) >= pair_min_values;
  std::vector<Moments> mom(T);
  std::vector<int64_t> nz(T, 0);
  std::vector<int64_t> hist(T * NB, 0);

  // Tasks go to threads in contiguous runs of about equal work, not of equal task count: the last task of a
  // tensor is often a small remainder, and at::parallel_for over T tasks would hand one thread ceil(T/2) full
  // ones (course CNN bs512, 16x7x7: 6 full tasks + 1 small; 4 full on one thread, 2 + the small on the other).
  // Which thread runs a task changes no result: each task's moments and counts are its own, and they are merged
  // in task order below.
  const std::vector<int64_t> run = balanced_runs(tasks, at::get_num_threads());
  at::parallel_for(0, int64_t(run.size()) - 1, 1, [&](int64_t p0, int64_t p1) {
    const int64_t t0 = run[p0], t1 = run[p1];
    // Scratch the loops below write before they read: uninitialised (a std::vector would zero 20 KB a call).
    const std::unique_ptr<acc_t[]> vals(new acc_t[kChunk]);
    const std::unique_ptr<int32_t[]> slots(new int32_t[kChunk]);
    std::vector<int32_t> sub(kSub * NB);  // kSub interleaved sub-histograms (see scatter_singles)
    const std::unique_ptr<int32_t[]> pidx(new int32_t[pairs ? kChunk / 2 : 0]);
    std::vector<uint16_t> tab(pairs ? kPairCopies * NB * NB : 0);  // zero; fold_pairs leaves it so
    std::vector<uint32_t> tab32(pairs ? NB * NB : 0);                // zero; drain_pairs32 leaves it so
    int64_t tab32_task = -1;   // the task whose histogram tab32's counts go to (one of its group); -1: empty
    uint64_t tab32_pairs = 0;  // pairs counted in tab32: a bound on any one counter
    for (int64_t t = t0; t < t1; ++t) {
      const Task& tk = tasks[t];
      const int64_t n_task = (tk.o1 - tk.o0) * (tk.i1 - tk.i0);
      const bool tp = pairs && n_task >= pair_min_values;
      std::fill(sub.begin(), sub.end(), 0);
      for (int64_t o = tk.o0; o < tk.o1; ++o) {
        const scalar_t* base = x + o * so + tk.g * sg;
        for (int64_t c0 = tk.i0; c0 < tk.i1; c0 += kChunk) {
          const int64_t len = std::min(kChunk, tk.i1 - c0);
          const acc_t* src;
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            if (si == 1) {
              src = base + c0;  // already the accumulator type and contiguous: read it in place
            } else {
              for (int64_t i = 0; i < len; ++i) vals[i] = base[(c0 + i) * si];
              src = vals.get();
            }
          } else {  // half/bfloat16: convert once into the L1 buffer
            for (int64_t i = 0; i < len; ++i) vals[i] = acc_t(base[(c0 + i) * si]);
            src = vals.get();
          }
          chunk_stats(src, len, b, slots.get(), mom[t], nz[t]);
          if (tp) {
            scatter_pairs(slots.get(), len, pidx.get(), tab.data(), sub.data(), NB);
          } else {
            scatter_singles(slots.get(), len, sub.data(), NB);
          }
        }
      }
      int64_t* h = hist.data() + t * NB;
      for (int64_t s = 0; s < NB; ++s) {
        int64_t acc = 0;
        for (int k = 0; k < kSub; ++k) acc += sub[k * NB + s];
        h[s] = acc;
      }
      if (tp) {
        if (tab32_task >= 0 && (tasks[tab32_task].g != tk.g || tab32_pairs + uint64_t(n_task) > UINT32_MAX)) {
          drain_pairs32(tab32.data(), NB, hist.data() + tab32_task * NB);
          tab32_pairs = 0;
        }
        fold_pairs(tab.data(), NB, tab32.data());
        tab32_task = t;
        tab32_pairs += uint64_t(n_task / 2);
      }
    }
    if (tab32_task >= 0) drain_pairs32(tab32.data(), NB, hist.data() + tab32_task * NB);
  });

  // Merge the tasks of each group in task order (deterministic for a given task split).
  std::vector<Moments> gm(G);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = tasks[t].g;
    gm[g].merge(mom[t]);
    cnt_out[g * kCountCols + kColNearZero] += nz[t];
    for (int64_t s = 0; s < b.bins; ++s) hist_out[g * b.bins + s] += hist[t * NB + s];
    for (int e = 0; e < kNumExtra; ++e) cnt_out[g * kCountCols + kColNaN + e] += hist[t * NB + b.bins + e];
  }
  for (int64_t g = 0; g < G; ++g) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const bool any = gm[g].n > 0;
    fs_out[g * 4 + 0] = any ? gm[g].mean : nan;
    fs_out[g * 4 + 1] = any ? gm[g].m2 : 0.0;
    fs_out[g * 4 + 2] = any ? gm[g].mn : nan;
    fs_out[g * 4 + 3] = any ? gm[g].mx : nan;
  }
}

#if defined(__AVX512F__)
// A 16 x 16 block of float, in registers: src holds 16 rows (at stride C) of 16 channels, dst gets 16
// channel rows (at stride ld) of 16 values. Three rounds of shuffles (pairs of floats, pairs of pairs,
// 128-bit lanes, then 256-bit halves): 16 loads and 16 full-line stores instead of 256 scalar moves.
inline void transpose16x16(const float* src, int64_t C, float* dst, int64_t ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * C);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
}
#endif

// ---- Layout B: channels last, a (rows, C) matrix with the channel fastest --------------------------
// Reading channel by channel would stride through memory C times. Instead each task walks a band of rows
// once, a tile of R rows at a time: the tile is transposed, 16 channels at a time, into an L1-resident
// (16, R) buffer, and then each channel's R values are one contiguous chunk for the same chunk_stats as
// layout A.
template <typename scalar_t>
void run_rows(const scalar_t* x, int64_t rows, int64_t C, const Binning<at::opmath_type<scalar_t>>& b,
              double* fs_out, int64_t* cnt_out, int64_t* hist_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t NB = b.bins + kNumExtra;
  // rows per tile: ~16K values per tile, but at least 16 and at most kChunk values per channel chunk
  const int64_t R = std::min<int64_t>(kChunk, std::max<int64_t>(16, 16384 / std::max<int64_t>(C, 1)));
  const int64_t min_rows = std::max<int64_t>(R, kTaskElems / std::max<int64_t>(C, 1));
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), (rows + min_rows - 1) / min_rows));
  const int64_t per = (rows + T - 1) / T;
  std::vector<std::vector<Moments>> mom(T, std::vector<Moments>(C));
  std::vector<std::vector<int64_t>> nz(T, std::vector<int64_t>(C, 0));
  // Per channel, kSub sub-histograms (scatter_singles: one channel's values pile onto one bin as well) when a
  // task's rows outnumber the extra counters they cost to clear and add up; one histogram otherwise.
  const int64_t copies = per >= 4 * kSub * NB ? kSub : 1;
  std::vector<std::vector<int32_t>> hist(T, std::vector<int32_t>(C * copies * NB, 0));  // a task: < 2^31 rows

  // The transpose, one block of kCB channels at a time: a row's kCB channels are one 64-byte line of fp32
  // input, and the block's (kCB, nr) buffer (33 KB at R = 512) stays in L1 for chunk_stats to read. Its rows
  // are ld = R + 16 values apart, not R: at R = 512 a 2 KB stride maps every buffer row onto the same two L1
  // sets, and the old whole-tile transpose (C rows of 2 KB stride, 64 KB) spent more time evicting its own
  // lines than binning -- 2.7 ns/value against 0.5 for NCHW (16x32x32x32 fp32, one thread, kernel only);
  // blocked and padded, 0.9; with fp32 16 x 16 blocks moved in AVX-512 registers, 0.7. The channel order inside a tile does not matter: each channel's moments and counts are
  // its own, and its chunks are still the same R rows in the same order, so the results are bit-identical.
  constexpr int64_t kCB = 16;
  const int64_t ld = R + 16;
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    const std::unique_ptr<acc_t[]> tile(new acc_t[kCB * ld]);  // written before read: uninitialised
    const std::unique_ptr<int32_t[]> slots(new int32_t[R]);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r_begin = t * per, r_end = std::min(rows, r_begin + per);
      int32_t* h = hist[t].data();
      for (int64_t r0 = r_begin; r0 < r_end; r0 += R) {
        const int64_t nr = std::min(R, r_end - r0);
        const scalar_t* p = x + r0 * C;
        for (int64_t c0 = 0; c0 < C; c0 += kCB) {
          const int64_t cb = std::min(kCB, C - c0);
          acc_t* __restrict__ tl = tile.get();
          if (cb == kCB) {  // a constant trip count, for the compiler to unroll
            int64_t r = 0;
#if defined(__AVX512F__)
            if constexpr (std::is_same_v<scalar_t, float>)
              for (; r + 16 <= nr; r += 16) transpose16x16(p + r * C + c0, C, tl + r, ld);
#endif
            for (; r < nr; ++r)
              for (int64_t c = 0; c < kCB; ++c) tl[c * ld + r] = acc_t(p[r * C + c0 + c]);
          } else {
            for (int64_t r = 0; r < nr; ++r)
              for (int64_t c = 0; c < cb; ++c) tl[c * ld + r] = acc_t(p[r * C + c0 + c]);
          }
          for (int64_t c = c0; c < c0 + cb; ++c) {
            chunk_stats(tl + (c - c0) * ld, nr, b, slots.get(), mom[t][c], nz[t][c]);
            int32_t* hc = h + c * copies * NB;
            if (copies == kSub) {
              scatter_singles(slots.get(), nr, hc, NB);
            } else {
              for (int64_t i = 0; i < nr; ++i) ++hc[slots[i]];
            }
          }
        }
      }
    }
  });

  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t c = 0; c < C; ++c) {
    Moments m;
    for (int64_t t = 0; t < T; ++t) {
      m.merge(mom[t][c]);
      cnt_out[c * kCountCols + kColNearZero] += nz[t][c];
      for (int64_t k = 0; k < copies; ++k) {
        const int32_t* hc = hist[t].data() + (c * copies + k) * NB;
        for (int64_t s = 0; s < b.bins; ++s) hist_out[c * b.bins + s] += hc[s];
        for (int e = 0; e < kNumExtra; ++e) cnt_out[c * kCountCols + kColNaN + e] += hc[b.bins + e];
      }
    }
    const bool any = m.n > 0;
    fs_out[c * 4 + 0] = any ? m.mean : nan;
    fs_out[c * 4 + 1] = any ? m.m2 : 0.0;
    fs_out[c * 4 + 2] = any ? m.mn : nan;
    fs_out[c * 4 + 3] = any ? m.mx : nan;
  }
}

// True if x is laid out as (N, spatial..., C) in memory: channels last, for any rank >= 3.
bool channels_last_dense(const at::Tensor& x) {
  if (x.dim() < 3 || x.stride(1) != 1) return false;
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < x.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  return x.permute(perm).is_contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> act_stats_cpu(const at::Tensor& x_in, int64_t bins, double lo,
                                                             double hi, double eps, bool per_channel) {
  check_device(x_in, c10::DeviceType::CPU, "act_stats", "x");
  check_floating(x_in, "act_stats", "x");
  check_hist_args(bins, lo, hi, eps, x_in.scalar_type() == at::kDouble);
  PYDL_CHECK_VALUE(!per_channel || x_in.dim() >= 2, "act_stats: per_channel needs x of rank >= 2 (N, C, ...), got rank ",
                   x_in.dim());

  const auto acc_dtype = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t G = per_channel ? x_in.size(1) : 1;
  const int64_t numel = x_in.numel();
  // Statistics are merged in double (fs64); they are cast to the accumulator dtype on the way out. The outputs
  // are filled here, in plain loops, not by at::zeros / fill_ / .to(): a hook calls this between a model's
  // layers, where every ATen op it runs starts with cold caches -- measured inside a training step (course
  // CNN, one thread), each of those TensorIterator ops cost several us there against well under one alone.
  std::vector<double> fs64(size_t(G) * 4);
  auto fs = at::empty({G, 4}, x_in.options().dtype(acc_dtype));
  auto counts = at::empty({G, kCountCols}, x_in.options().dtype(at::kLong));
  auto hist = at::empty({G, bins}, x_in.options().dtype(at::kLong));
  {
    int64_t* cp = counts.data_ptr<int64_t>();
    std::fill(cp, cp + G * kCountCols, int64_t(0));
    for (int64_t g = 0; g < G; ++g) cp[g * kCountCols + kColCount] = numel / G;
    int64_t* hp = hist.data_ptr<int64_t>();
    std::fill(hp, hp + G * bins, int64_t(0));
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "pydl_act_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Binning<acc_t> b(bins, lo, hi, eps);
    double* fsp = fs64.data();
    int64_t* cp = counts.data_ptr<int64_t>();
    int64_t* hp = hist.data_ptr<int64_t>();
    if (!per_channel) {
      // Any dense, non-overlapping layout is one flat span: order does not matter for a whole-tensor stat.
      const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
      run_spans<scalar_t>(x.data_ptr<scalar_t>(), 1, 1, numel, 0, 0, 1, b, fsp, cp, hp);
    } else if (G > 0 && numel > 0 && !x_in.is_contiguous() && channels_last_dense(x_in)) {
      run_rows<scalar_t>(x_in.data_ptr<scalar_t>(), numel / G, G, b, fsp, cp, hp);
    } else {
      const at::Tensor x = x_in.contiguous();
      const int64_t N = x.size(0);
      const int64_t inner = (N * G) > 0 ? numel / (N * G) : 0;
      if (inner == 1) {  // (N, C) activations, e.g. after a Linear layer: rows of channels
        run_rows<scalar_t>(x.data_ptr<scalar_t>(), N, G, b, fsp, cp, hp);
        return;
      }
      run_spans<scalar_t>(x.data_ptr<scalar_t>(), N, G, inner, G * inner, inner, 1, b, fsp, cp, hp);
    }
  });
  if (acc_dtype == at::kDouble) {
    std::copy(fs64.begin(), fs64.end(), fs.data_ptr<double>());
  } else {
    float* fp = fs.data_ptr<float>();
    for (size_t i = 0; i < fs64.size(); ++i) fp[i] = static_cast<float>(fs64[i]);  // as .to(kFloat) rounds
  }
  return {fs, counts, hist};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) {
  for (const char* s : pydl::schema::act_stats) m.def(s);  // csrc/schemas.h
}

TORCH_LIBRARY_IMPL(pydl_cpu, CPU, m) { m.impl("act_stats", &pydl::act_stats_cpu); }
