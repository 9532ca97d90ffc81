// LSTM / GRU on the CPU: the fused gate pointwise loops (forward and backward). The GEMMs and the time loop
// are in csrc/rnn_driver.h (shared with the CUDA glue); at::mm / at::addmm_out call MKL into preallocated
// buffers, so a whole sequence -- every layer, both directions, all steps -- is one C++ call.
//
// Why the pointwise part matters on a CPU: torch's own LSTM cell runs sigmoid, tanh, mul and add as separate
// ATen ops over (B, 4H) tensors (7-10 passes over memory per step, each with dispatcher overhead), and its
// backward goes through autograd op by op. Here a step is ONE pass: each (b, j) reads its four gate
// pre-activations and writes h, c and the activated gates.
//
// Vectorisation: glibc's vector expf is only declared under -ffast-math, which pydl does not use (the other
// ops need IEEE semantics). So float exp is written out below: Cody-Waite range reduction plus a degree-6
// polynomial (the classic Cephes expf coefficients), all plain arithmetic that `#pragma omp simd` turns into
// AVX-512/AVX2 code (checked with -fopt-info-vec for the fp32 loops; the fp16/bf16 conversions keep those
// loops scalar). Relative error ~2 ulp, far inside the parity tolerances. float64 uses std::exp/std::tanh
// (tests and gradcheck, not speed).
//
// Why one long file: the LSTM and GRU gate math is written once and used by both the per-step kernels
// and the one-region sequence loop, forward and backward; next split: the region loop to csrc/cpu/rnn/.
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>

#include <omp.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <list>
#include <mutex>
#include <vector>

#include "common.h"
#include "schemas.h"
#include "rnn_driver.h"

namespace pydl {
namespace {

using at::Tensor;

// 512-bit vectors where the build enables AVX-512 (-march=native on such a CPU): GCC defaults to 256-bit
// ones there, and exp + division bound these loops, so the wider registers are worth ~1.5x on the pointwise
// part. Without AVX-512 enabled this changes nothing.
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")
// No trapping math here: pydl never unmasks FP exceptions, so a comparison that might raise FE_INVALID is free
// to become a non-signalling one. Under GCC's default the exp_f clamps below compiled to signalling compares and
// blends costing about as much as the rest of the exp: the LSTM cell pass alone (B32 x 4x256 fp32, 50 steps, one
// thread) went 0.98 -> 0.63 ms; in a T50 B32 256->256 forward, thread time, the LSTM pass 0.84-0.96 -> 0.66-0.80
// ms and the GRU's 0.62-0.71 -> 0.48-0.56. Values are unchanged (outputs and grads bitwise equal): this allows
// no reassociation or contraction, only exception-flag side effects to differ.
#pragma GCC optimize("no-trapping-math")

inline float exp_f(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2]
  x = x < -87.3f ? -87.3f : x;  // keeps 2^n a normal float (and exp(-87.3) ~ 1e-38 is 0 for a sigmoid)
  x = x > 88.3f ? 88.3f : x;
  // Rounding without a float->int conversion: adding 1.5 * 2^23 pushes the fraction out of the mantissa,
  // so t's low mantissa bits hold n as an integer. A cvt instruction may raise FE_INVALID, and under GCC's
  // default -ftrapping-math that alone stops the loop from vectorising; this is plain adds and bit moves.
  const float kMagic = 12582912.0f;
  const float t = x * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  float r = x - n * 0.693359375f;  // ln2 split in two (Cody-Waite): the product n * hi is exact
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;  // exp(r) on [-ln2/2, ln2/2]: Cephes' minimax polynomial
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the exponent bits (bit casts, not memcpy through the stack: that also blocks vectorisation)
  const int32_t bits = (__builtin_bit_cast(int32_t, t) - __builtin_bit_cast(int32_t, kMagic) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_f(-2.0f * x)) - 1.0f; }
inline double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// Rows [b0, b1) at a time; a task gets at least ~4k elements. Each step's GEMM already runs on every
// thread; a step's pointwise part (B*H elements, ~10 flops + ~40 bytes each) split the same way costs one
// more parallel region (~1-3 us) and saves half of its ~15-30 us at B*H = 8k on two threads. Below ~4k
// elements the region would cost more than it saves.
template <typename F>
inline void for_rows(int64_t B, int64_t H, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1));
  at::parallel_for(0, B, grain, f);
}

// One batch row's slice of n hidden units, the math of every kernel below written once. Gate k of a row
// sits at `p + k * stride`: the full-width tensors put it at column k*H, a parallel region's per-thread
// buffer at k*n (its own units only). (A #pragma cannot sit inside AT_DISPATCH's macro argument, hence
// templates.)
template <typename S, typename A, typename X>
inline void lstm_fwd_row(const X* __restrict__ x, int64_t xs, const A* __restrict__ cp, A* __restrict__ g,
                         int64_t gs, A* __restrict__ cc, S* __restrict__ hh, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const A i = sigmoid_(A(x[j]));
    const A f = sigmoid_(A(x[xs + j]));
    const A gg = tanh_(A(x[2 * xs + j]));
    const A o = sigmoid_(A(x[3 * xs + j]));
    const A cn = f * cp[j] + i * gg;
    g[j] = i;
    g[gs + j] = f;
    g[2 * gs + j] = gg;
    g[3 * gs + j] = o;
    cc[j] = cn;
    hh[j] = S(o * tanh_(cn));
  }
}

// dcin may be the same memory as dcp (in-place update, same index): no __restrict__ on those two.
template <typename S, typename A, typename R>
inline void lstm_bwd_row(const S* dho, const R* dhr, const A* dcin, const A* __restrict__ g, int64_t gs,
                         const A* __restrict__ cc, const A* __restrict__ cp, S* __restrict__ dg, int64_t dgs, A* dcp,
                         int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const A i = g[j], f = g[gs + j], gg = g[2 * gs + j], o = g[3 * gs + j];
    const A dh = A(dho[j]) + A(dhr[j]);
    const A tc = tanh_(cc[j]);
    const A dct = dcin[j] + dh * o * (A(1) - tc * tc);  // dL/dc_t: from t+1 and through h_t
    dg[j] = S(dct * gg * i * (A(1) - i));
    dg[dgs + j] = S(dct * cp[j] * f * (A(1) - f));
    dg[2 * dgs + j] = S(dct * i * (A(1) - gg * gg));
    dg[3 * dgs + j] = S(dh * tc * o * (A(1) - o));
    dcp[j] = dct * f;
  }
}

template <typename S, typename A, typename Y>
inline void gru_fwd_row(const S* __restrict__ x, int64_t xs, const Y* __restrict__ y, int64_t ys,
                        const S* __restrict__ hp, A* __restrict__ w, int64_t wst, S* __restrict__ hh, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const A r = sigmoid_(A(x[j]) + A(y[j]));
    const A z = sigmoid_(A(x[xs + j]) + A(y[ys + j]));
    const A hn = A(y[2 * ys + j]);  // W_hn h + b_hn, gated by r
    const A nn = tanh_(A(x[2 * xs + j]) + r * hn);
    w[j] = r;
    w[wst + j] = z;
    w[2 * wst + j] = nn;
    w[3 * wst + j] = hn;
    hh[j] = S((A(1) - z) * nn + z * A(hp[j]));
  }
}

// dhd may alias dhdo (same index).
template <typename S, typename A, typename R>
inline void gru_bwd_row(const S* dho, const R* dhr, const A* dhd, const A* __restrict__ w, int64_t wst,
                        const S* __restrict__ hp, S* __restrict__ gi, int64_t gis, S* __restrict__ gh, int64_t ghs,
                        A* dhdo, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const A r = w[j], z = w[wst + j], nn = w[2 * wst + j], hn = w[3 * wst + j];
    const A dh = A(dho[j]) + A(dhr[j]) + dhd[j];
    const A dn = dh * (A(1) - z) * (A(1) - nn * nn);
    const A dz = dh * (A(hp[j]) - nn) * z * (A(1) - z);
    const A dr = dn * hn * r * (A(1) - r);
    gi[j] = S(dr);
    gi[gis + j] = S(dz);
    gi[2 * gis + j] = S(dn);
    gh[j] = S(dr);
    gh[ghs + j] = S(dz);
    gh[2 * ghs + j] = S(dn * r);
    dhdo[j] = dh * z;
  }
}

// The per-step kernels of the generic driver loop (cells, and sequences in fp16/bf16): whole rows, split
// over threads by for_rows.
template <typename scalar_t>
void lstm_fwd_impl(const Tensor& pre, const Tensor& c_prev, Tensor& gates, Tensor& c, Tensor& h) {
  const int64_t B = h.size(0), H = h.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* X = pre.data_ptr<scalar_t>();
  const acc_t* CP = c_prev.data_ptr<acc_t>();
  acc_t* Gt = gates.data_ptr<acc_t>();
  acc_t* C = c.data_ptr<acc_t>();
  scalar_t* Hp = h.data_ptr<scalar_t>();
  const int64_t sx = pre.stride(0), scp = c_prev.stride(0), sg = gates.stride(0),
                sc = c.stride(0), sh = h.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      lstm_fwd_row<scalar_t, acc_t>(X + b * sx, H, CP + b * scp, Gt + b * sg, H, C + b * sc, Hp + b * sh, H);
  });
}

template <typename scalar_t>
void lstm_bwd_impl(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dc, const Tensor& gates, const Tensor& c,
                   const Tensor& c_prev, Tensor& dG, Tensor& dc_prev) {
  const int64_t B = c.size(0), H = c.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* DHO = dh_out.data_ptr<scalar_t>();
  const scalar_t* DHR = dh_rec.data_ptr<scalar_t>();
  const acc_t* DC = dc.data_ptr<acc_t>();
  const acc_t* Gt = gates.data_ptr<acc_t>();
  const acc_t* C = c.data_ptr<acc_t>();
  const acc_t* CP = c_prev.data_ptr<acc_t>();
  scalar_t* DG = dG.data_ptr<scalar_t>();
  acc_t* DCP = dc_prev.data_ptr<acc_t>();
  const int64_t s1 = dh_out.stride(0), s2 = dh_rec.stride(0), s3 = dc.stride(0), s4 = gates.stride(0),
                s5 = c.stride(0), s6 = c_prev.stride(0), s7 = dG.stride(0), s8 = dc_prev.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      lstm_bwd_row<scalar_t, acc_t>(DHO + b * s1, DHR + b * s2, DC + b * s3, Gt + b * s4, H, C + b * s5,
                                    CP + b * s6, DG + b * s7, H, DCP + b * s8, H);
  });
}

template <typename scalar_t>
void gru_fwd_impl(const Tensor& xg, const Tensor& hg, const Tensor& h_prev, Tensor& ws, Tensor& h) {
  const int64_t B = h.size(0), H = h.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* X = xg.data_ptr<scalar_t>();
  const scalar_t* Y = hg.data_ptr<scalar_t>();
  const scalar_t* HP = h_prev.data_ptr<scalar_t>();
  acc_t* W = ws.data_ptr<acc_t>();
  scalar_t* Hp = h.data_ptr<scalar_t>();
  const int64_t sx = xg.stride(0), sy = hg.stride(0), shp = h_prev.stride(0), sw = ws.stride(0), sh = h.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      gru_fwd_row<scalar_t, acc_t>(X + b * sx, H, Y + b * sy, H, HP + b * shp, W + b * sw, H, Hp + b * sh, H);
  });
}

template <typename scalar_t>
void gru_bwd_impl(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dh_dir, const Tensor& ws,
                  const Tensor& h_prev, Tensor& dGi, Tensor& dGh, Tensor& dh_dir_out) {
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* DHO = dh_out.data_ptr<scalar_t>();
  const scalar_t* DHR = dh_rec.data_ptr<scalar_t>();
  const acc_t* DHD = dh_dir.data_ptr<acc_t>();
  const acc_t* W = ws.data_ptr<acc_t>();
  const scalar_t* HP = h_prev.data_ptr<scalar_t>();
  scalar_t* GI = dGi.data_ptr<scalar_t>();
  scalar_t* GH = dGh.data_ptr<scalar_t>();
  acc_t* DHDO = dh_dir_out.data_ptr<acc_t>();
  const int64_t s1 = dh_out.stride(0), s2 = dh_rec.stride(0), s3 = dh_dir.stride(0), s4 = ws.stride(0),
                s5 = h_prev.stride(0), s6 = dGi.stride(0), s7 = dGh.stride(0), s8 = dh_dir_out.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      gru_bwd_row<scalar_t, acc_t>(DHO + b * s1, DHR + b * s2, DHD + b * s3, W + b * s4, H, HP + b * s5,
                                   GI + b * s6, H, GH + b * s7, H, DHDO + b * s8, H);
  });
}

// ---- a whole sequence in one parallel region (fp32 / fp64) -------------------------------------------
//
// The generic driver runs a step as one MKL GEMM (h_{t-1} W_hh^T, forked over the threads and joined) plus
// one pointwise kernel (forked and joined again): two fork/joins and a GEMM too small to split well, per
// step. Here the team is started once per direction of a layer. Each thread owns a slice of the hidden
// units j0..j0+n and, for them, the G gate columns of W_hh, packed once into panels (below). A step is then:
// its slice of the recurrent GEMM (every row of h_{t-1} times its packed columns), its slice of the
// pointwise cell update, and ONE barrier -- h_t (or, backward, dG_t) must be complete before any thread
// reads the whole of it in the next step. Nothing else is shared: a thread's c, gates and dc columns are
// its own. When the weights fit (kInRegionBytes, below) the step also makes its gate columns of the input
// projection x_t W_ih^T, with W_ih's columns packed the same way.
//
// The cell update stays a pass of its own after the step's GEMM, over the thread's B x (4 n) pre-activations.
// Fusing it into the GEMM's epilogue was built and measured (panels holding the 4 gates of 16 units, the
// update applied to each finished panel while it is in L1; T50 B32 256->256 fp32, thread CPU time): GEMM +
// epilogue 5.0-5.2 ms against GEMM 4.0-4.2 + pass 0.83-0.97 ms, 1 thread; no gain at 2 threads either. The pass
// is bound by its arithmetic (5 exp + 5 divisions per element, ~2.1 ns each), not by memory: the buffer it
// reads (B x 4n, <= 128 KB) is still in L1/L2. Called from inside the micro-kernel on its registers instead,
// the epilogue made GCC keep the accumulators in memory (1.5-7 ms slower).
//
// The GEMM slice: B x K times K x (G n), K = H forward and G*H backward (dh = dG_{t+1} W_hh). The weights
// are packed into column panels kNR wide and K rows deep, contiguous, so the micro-kernel streams them with
// whole-vector loads while kMR rows of h are broadcast, its kMR x kNV accumulator vectors in registers for
// the whole K loop. A library GEMM would repack its B operand on every call; these panels are packed once
// per sequence.

// The register block, kMR rows x kNV vectors of accumulators: 6 x 4 of AVX-512's 32 registers (measured on
// a 32 x 256 x 512 step, one thread: 6x4 ~190 GFLOP/s, 8x2 ~165, 5x4 ~172; MKL's sgemm on the same ~175),
// 6 x 2 of AVX2's and SSE's 16 (the classic 6x16 AVX2 kernel).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kMR = 6, kNV = 4;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kMR = 6, kNV = 2;
#else
constexpr int kVecBytes = 16;
constexpr int kMR = 6, kNV = 2;
#endif

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
};

template <typename T>
constexpr int64_t kLanes = kVecBytes / sizeof(T);
template <typename T>
constexpr int64_t kNR = kNV * kLanes<T>;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Unaligned vector load/store (memcpy of a constant size compiles to one vmovups).
template <typename V, typename T>
inline V vload(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void vstore(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// C[0:MR, 0:kNR] (+)= A[0:MR, 0:K] P, P one packed panel (row k at P + k * kNR). Per k: kNV vector loads
// of P, MR broadcasts of A, MR * kNV independent FMAs (enough to cover the FMA latency on both ports).
// Without `accumulate` the accumulators start from `bias` (kNR values, the same for every row) or zero: a
// bias added in the GEMM's prologue costs kNV loads per row block instead of a pass over C.
template <typename T, int MR>
inline void micro_kernel(const T* A, int64_t lda, const T* P, int64_t K, T* C, int64_t ldc, bool accumulate,
                         const T* bias) {
  using V = typename VecOf<T>::type;
  constexpr int64_t L = kLanes<T>;
  V c[MR][kNV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
      c[r][v] = accumulate ? vload<V>(C + r * ldc + v * L) : bias ? vload<V>(bias + v * L) : V{};
  for (int64_t k = 0; k < K; ++k) {
    V w[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) w[v] = vload<V>(P + (k * kNV + v) * L);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) c[r][v] += a * w[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) vstore(C + r * ldc + v * L, c[r][v]);
}

// The last M % kMR rows.
template <typename T, int R>
inline void micro_tail(int64_t m, const T* A, int64_t lda, const T* P, int64_t K, T* C, int64_t ldc, bool acc,
                       const T* bias) {
  if constexpr (R > 0) {
    if (m == R)
      micro_kernel<T, R>(A, lda, P, K, C, ldc, acc, bias);
    else
      micro_tail<T, R - 1>(m, A, lda, P, K, C, ldc, acc, bias);
  }
}

// K is walked in blocks of kKC packed rows, each block over every panel and every row block: A's block
// (B x kKC, 16 KB at B = 32 fp32) stays in L1 while the panels stream past it. Unblocked, a step's A (B x H,
// 32 KB at H = 256) and the panel rows pushed each other out of L1 (an earlier version of this code measured
// ~150 -> ~165-171 GFLOP/s on the 32 x 256 x 512 step, one thread; with this change and the folded biases
// a one-thread LSTM T50 B32 256->256 forward went from 10.0-10.2 to 9.65-9.9 ms).
constexpr int64_t kKC = 128;

// C (M x NP, row stride ldc) (+)= A (M x K, row stride lda) times the packed K x NP matrix; without
// `accumulate`, C starts from bias (NP values, or zero when null).
template <typename T>
void panel_gemm(int64_t M, int64_t K, int64_t NP, const T* A, int64_t lda, const T* packed, T* C, int64_t ldc,
                bool accumulate, const T* bias = nullptr) {
  int64_t k0 = 0;
  do {  // once even for K = 0: C must still be initialised
    const int64_t kc = std::min(kKC, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t q = 0; q < NP / kNR<T>; ++q) {
      const T* P = packed + q * K * kNR<T> + k0 * kNR<T>;
      const T* bq = bias ? bias + q * kNR<T> : nullptr;
      T* Cq = C + q * kNR<T>;
      const T* Ak = A + k0;
      int64_t b = 0;
      for (; b + kMR <= M; b += kMR) micro_kernel<T, kMR>(Ak + b * lda, lda, P, kc, Cq + b * ldc, ldc, acc, bq);
      micro_tail<T, kMR - 1>(M - b, Ak + b * lda, lda, P, kc, Cq + b * ldc, ldc, acc, bq);
    }
    k0 += kc;
  } while (k0 < K);
}

// Packs a K x N matrix into panels, zero-padded to a multiple of kNR columns; column n is column(n)[k * ks].
// Panel by panel, k outer and the panel's columns inner: the writes are sequential and the reads kNR short
// streams (column by column, every write of a 64 KB panel went to a new cache line: packing cost 4x more).
template <typename T, typename F>
void pack_panels(T* dst, int64_t K, int64_t N, int64_t ks, const F& column) {
  constexpr int64_t NR = kNR<T>;
  const T* cols[NR];
  for (int64_t n0 = 0; n0 < N; n0 += NR) {
    for (int64_t c = 0; c < NR; ++c) cols[c] = n0 + c < N ? column(n0 + c) : nullptr;
    T* out = dst + (n0 / NR) * K * NR;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < NR; ++c) out[k * NR + c] = cols[c] ? cols[c][k * ks] : T(0);
  }
}

// Hidden units split over the parts (one part per thread when the team is as large as asked): part p owns
// units [H p / P, H (p+1) / P). Each part has its packed weights, its GEMM output buffer (B x np) and, for a
// forward, its columns of the biases; the forward's in-region input projection adds packed W_ih columns and
// (GRU, whose input and recurrent terms stay apart) a second output buffer.
template <typename T>
struct Part {
  int64_t j0, n, np;
  T* packed;    // K x np: W_hh's columns (forward) / rows (backward) of this part
  T* packed_x;  // I x np: W_ih's, when the projection runs in the region
  T* copy;      // the weights packed here, as they were (the packed-weight cache checks them against it)
  T* buf;       // B x np: the recurrent GEMM's output (LSTM forward: the whole pre-activation)
  T* xbuf;      // B x np: GRU forward: x W_ih^T + b_ih
  T* bias;      // np: LSTM b_ih + b_hh, GRU b_hh (zero in the padding columns)
  T* xbias;     // np: GRU b_ih
};

// The number of parts: one per thread, fewer when H is tiny (every part owns at least one unit), one when
// called from inside another parallel region (a nested team would be a single thread anyway).
inline int64_t num_parts(int64_t H) {
  return at::in_parallel_region() ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H));
}

// The widest part's padded column count.
template <typename T>
int64_t widest(int64_t H, int64_t P, int64_t cols_per_unit) {
  return round_up(cols_per_unit * ((H + P - 1) / P), kNR<T>);
}

// The parts and their per-call scratch (buf, xbuf, the biases); the packed weights come from take_packed.
template <typename T>
std::vector<Part<T>> make_parts(int64_t H, int64_t P, int64_t cols_per_unit, int64_t B, bool xbuf,
                                Tensor& workspace, const at::TensorOptions& opt) {
  std::vector<Part<T>> parts(P);
  auto size = [&](int64_t np) {  // each part on its own cache lines
    return round_up((B * (xbuf ? 2 : 1) + 2) * np, 64 / sizeof(T));
  };
  int64_t total = 0;
  for (int64_t p = 0; p < P; ++p) {
    auto& q = parts[p];
    q.j0 = H * p / P;
    q.n = H * (p + 1) / P - q.j0;
    q.np = round_up(cols_per_unit * q.n, kNR<T>);
    total += size(q.np);
  }
  workspace = at::empty({total}, opt);
  T* w = workspace.data_ptr<T>();
  for (auto& q : parts) {
    q.buf = w;
    q.xbuf = q.buf + B * q.np;
    q.bias = q.xbuf + (xbuf ? B * q.np : 0);
    q.xbias = q.bias + q.np;
    w += size(q.np);
  }
  return parts;
}

// ---- the packed-weight cache ----
//
// Packing a sequence's weights into panels is a transposing copy of all of W_hh (and of W_ih when the
// projection runs in the region): at T50 B32 256->256 0.17-0.32 ms of thread time per direction on one
// thread (0.42-0.76 ms summed over two threads for the forward's W_ih + W_hh), forward and backward alike
// -- 2-5% of the call -- and the same work on every call while the weights stay the same
// (inference; the forward and backward of one training step). So the packed panels of a call are kept,
// keyed on what the packing depends on (the weights' addresses, the shapes, the dtype, the split into parts,
// forward or backward), and reused by the next call with the same key.
//
// A hit is not trusted blindly: each thread compares its part's weights bitwise with the copy of them that it
// kept when it packed (contiguous reads: 0.09-0.11 ms where packing took 0.17-0.32, one thread, thread CPU
// time) and repacks when they differ.
// The version counter cannot tell: an update through `.data` (a common idiom) shares the storage but not the
// version counter, and an address can be reused by a new tensor. When the weights did change (a training
// loop's optimizer step between calls) the check stops at the first difference and the part is repacked, as
// it always was, plus the copy (one sequential write of the weights).
//
// Bounded: at most kPackCacheBytes (least recently used entries go first; a larger entry is not kept). An
// entry is taken out of the cache while a call uses it, so concurrent calls never share one.
struct PackKey {
  int kind;  // 0: forward (W_hh, and W_ih when in the region), 1: backward (W_hh's column slices)
  const void* w_hh;
  const void* w_ih;  // the forward's W_ih when packed, else null
  int64_t H, I, G, P;
  at::ScalarType dtype;
  bool operator==(const PackKey& o) const {
    return kind == o.kind && w_hh == o.w_hh && w_ih == o.w_ih && H == o.H && I == o.I && G == o.G && P == o.P &&
           dtype == o.dtype;
  }
};

constexpr int64_t kPackCacheBytes = int64_t(64) << 20;

class PackCache {
 public:
  static PackCache& get() {
    static PackCache* cache = new PackCache;  // never destroyed: no tensor freed during interpreter teardown
    return *cache;
  }
  // The entry under key, removed from the cache (undefined when there is none).
  Tensor take(const PackKey& key) {
    std::lock_guard<std::mutex> lock(m_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->first == key) {
        Tensor buf = std::move(it->second);
        bytes_ -= buf.nbytes();
        entries_.erase(it);
        return buf;
      }
    return Tensor();
  }
  void give(const PackKey& key, Tensor buf) {
    if (int64_t(buf.nbytes()) > kPackCacheBytes) return;
    std::lock_guard<std::mutex> lock(m_);
    bytes_ += buf.nbytes();
    entries_.emplace_front(key, std::move(buf));
    while (bytes_ > kPackCacheBytes) {
      bytes_ -= entries_.back().second.nbytes();
      entries_.pop_back();
    }
  }

 private:
  std::mutex m_;
  std::list<std::pair<PackKey, Tensor>> entries_;  // most recently given first
  int64_t bytes_ = 0;
};

// Gives every part its packed (K x np), packed_x (KX x np) and copy (copy_len(q) values) storage: the cached
// buffer under key when there is one (returns true: the parts must still check their copies), else a new one.
// The caller hands `buf` back to the cache after the region.
template <typename T, typename CopyLen>
bool take_packed(const PackKey& key, std::vector<Part<T>>& parts, int64_t K, int64_t KX, const CopyLen& copy_len,
                 Tensor& buf, const at::TensorOptions& opt) {
  auto size = [&](const Part<T>& q) { return round_up((K + KX) * q.np + copy_len(q), 64 / sizeof(T)); };
  int64_t total = 0;
  for (const auto& q : parts) total += size(q);
  buf = PackCache::get().take(key);
  const bool hit = buf.defined() && buf.numel() == total;  // the key fixes the size: a check, not a case
  if (!hit) buf = at::empty({total}, opt);
  T* w = buf.data_ptr<T>();
  for (auto& q : parts) {
    q.packed = w;
    q.packed_x = q.packed + K * q.np;
    q.copy = q.packed_x + KX * q.np;
    w += size(q);
  }
  return hit;
}

// Compares (when `check`) or saves `rows` runs of `len` values, run i at row(i), with the copy at dst.
// Returns true when they were all the same (nothing to repack); after false, dst holds them.
template <typename T, typename Row>
bool same_or_save(T* dst, bool check, int64_t rows, int64_t len, const Row& row) {
  if (check) {
    bool same = true;
    for (int64_t i = 0; i < rows && same; ++i) same = std::memcmp(dst + i * len, row(i), len * sizeof(T)) == 0;
    if (same) return true;
  }
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * len, row(i), len * sizeof(T));
  return false;
}

// The step barrier. libgomp's barrier spins for a time set by OMP_WAIT_POLICY / GOMP_SPINCOUNT (cut to
// almost nothing when it thinks the machine is oversubscribed), then sleeps in a futex; a step here is
// ~50-100 us, so a thread that arrives first can be put to sleep and pay a futex wake (several us) at every
// step. This one spins on the generation counter for a fixed 4000 pause instructions (37 us on the 2-core
// Xeon it was tuned on; a pause costs 10-140 cycles depending on the core) and only then yields the core to
// the scheduler: waiting threads stay hot across a step, and still step aside when the machine is busy.
class StepBarrier {
 public:
  explicit StepBarrier(int64_t n) : n_(n) {}
  void wait() {
    const int64_t gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);  // nobody touches count_ again before gen_ moves on
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen;) {
      if (spins < 4000) {
        ++spins;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        sched_yield();
      }
    }
  }

 private:
  const int64_t n_;
  alignas(64) std::atomic<int64_t> count_{0};
  alignas(64) std::atomic<int64_t> gen_{0};
};

// Runs body(part) for every part of this thread, for each step, with a barrier after each step. Parts go
// to threads round-robin, so a smaller team than asked (OMP_DYNAMIC, a thread limit) is still correct.
template <typename T, typename Init, typename Step>
void run_region(std::vector<Part<T>>& parts, int64_t steps, const Init& init, const Step& step) {
  const int64_t P = parts.size();
  StepBarrier barrier(P);
#pragma omp parallel num_threads(P)
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    // packed by the thread that uses them: no barrier needed, and the pages are first touched on its core
    for (int64_t p = tid; p < P; p += nt) init(parts[p]);
    for (int64_t s = 0; s < steps; ++s) {
      for (int64_t p = tid; p < P; p += nt) step(parts[p], s);
      if (nt == P) {
        barrier.wait();
      } else {  // a smaller team: the own barrier counts P arrivals, so use OpenMP's
#pragma omp barrier
      }
    }
  }
}

// The input projection x_t W_ih^T runs inside the region, per step, when each thread's packed W_ih and
// W_hh columns together fit in 1 MB (the L2 of a current server core: both stay cached across the steps);
// else it is one library GEMM over all T steps before the region. In the region a step's thread makes its
// own gate columns of the projection, a second panel GEMM on the same output -- no (T, B, G*H) tensor
// written and read back, and the work is split the same way as the recurrence. Measured on one thread at
// T50 B32 128->128 (0.5 MB): LSTM forward 2.8-2.9 -> 2.56-2.6 ms vs up front; at 256->256 (2 MB per thread)
// the in-region projection was 4-10% slower than up front, hence the limit.
constexpr int64_t kInRegionBytes = 1 << 20;

template <typename T>
void seq_fwd_region(rnn::FwdRec& r) {
  const bool lstm = r.is_lstm;
  const Tensor x = r.x.contiguous();
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2), H = r.w_hh.size(1), G = lstm ? 4 : 3;
  const int64_t P = num_parts(H);
  const bool in_region = (I + H) * widest<T>(H, P, G) * int64_t(sizeof(T)) <= kInRegionBytes;
  Tensor workspace;
  auto parts = make_parts<T>(H, P, G, B, !lstm, workspace, x.options());
  const int64_t KX = in_region ? I : 0;
  const PackKey key{0, r.w_hh.data_ptr(), in_region ? r.w_ih.data_ptr() : nullptr, H, KX, G, P,
                    x.scalar_type()};
  Tensor packed;
  const bool hit = take_packed(key, parts, H, KX, [&](const Part<T>& q) { return G * q.n * (H + KX); }, packed,
                               x.options());
  // Up front: the projection without bias (the step adds it while copying its columns).
  const Tensor xg = in_region ? Tensor() : at::mm(x.view({T_ * B, I}), r.w_ih.t());
  // Without reserve (inference) the gates and c go to scratch that each thread reuses (its own columns).
  Tensor saved = r.saved.defined() ? r.saved : at::empty({1, B, 4 * H}, x.options());
  Tensor cs = lstm ? (r.cs.defined() ? r.cs : at::empty({2, B, H}, x.options())) : Tensor();
  const bool keep = r.saved.defined();
  const T* X = x.data_ptr<T>();
  const T* XG = in_region ? nullptr : xg.data_ptr<T>();
  const T* WI = r.w_ih.data_ptr<T>();
  const T* W = r.w_hh.data_ptr<T>();
  const T* BI = r.b_ih.defined() ? r.b_ih.data_ptr<T>() : nullptr;
  const T* BH = r.b_hh.defined() ? r.b_hh.data_ptr<T>() : nullptr;
  const T* H0 = r.h0.data_ptr<T>();
  const T* C0 = lstm ? r.c0.data_ptr<T>() : nullptr;
  T* HC = r.hcols.data_ptr<T>();
  T* SV = saved.data_ptr<T>();
  T* CS = lstm ? cs.data_ptr<T>() : nullptr;
  const int64_t sh0 = r.h0.stride(0), sht = r.hcols.stride(0), shb = r.hcols.stride(1);
  auto slot = [&](int64_t s, int64_t t) { return keep ? t : s % 2; };  // c of step s: cs[t] or the ping-pong
  run_region(
      parts, T_,
      [&](Part<T>& q) {  // column c = (g, jj) of the slice = row g*H + j0 + jj of W_hh and W_ih
        auto row = [&](int64_t c) { return (c / q.n) * H + q.j0 + c % q.n; };
        auto wh = [&](int64_t c) { return W + row(c) * H; };
        auto wi = [&](int64_t c) { return WI + row(c) * I; };
        // repacked only when the cached panels are missing or stale (each of the two matrices on its own)
        if (!same_or_save(q.copy, hit, G * q.n, H, wh)) pack_panels(q.packed, H, G * q.n, 1, wh);
        if (in_region && !same_or_save(q.copy + G * q.n * H, hit, G * q.n, I, wi))
          pack_panels(q.packed_x, I, G * q.n, 1, wi);
        for (int64_t c = 0; c < q.np; ++c) {
          const bool real = c < G * q.n && BI;
          // the LSTM sums both biases into one pre-activation; the GRU keeps b_hh inside r * (W_hn h + b_hn)
          q.bias[c] = real ? (lstm ? BI[row(c)] + BH[row(c)] : BH[row(c)]) : T(0);
          q.xbias[c] = real && !lstm ? BI[row(c)] : T(0);
        }
      },
      [&](Part<T>& q, int64_t s) {
        const int64_t t = r.reverse ? T_ - 1 - s : s, tp = r.reverse ? t + 1 : t - 1;
        const T* hp = s == 0 ? H0 : HC + tp * sht;
        const int64_t lhp = s == 0 ? sh0 : shb;
        T* xo = lstm ? q.buf : q.xbuf;  // where x_t W_ih^T + bias goes
        const T* xb = lstm ? q.bias : q.xbias;
        if (in_region) {
          panel_gemm(B, I, q.np, X + t * B * I, I, q.packed_x, xo, q.np, /*accumulate=*/false, xb);
        } else {
          for (int64_t b = 0; b < B; ++b)
            for (int64_t g = 0; g < G; ++g) {
              const T* src = XG + (t * B + b) * G * H + g * H + q.j0;
              T* dst = xo + b * q.np + g * q.n;
              const T* bb = xb + g * q.n;
              for (int64_t j = 0; j < q.n; ++j) dst[j] = src[j] + bb[j];
            }
        }
        // the LSTM's recurrent term lands on the same pre-activation, the GRU's in its own buffer (+ b_hh)
        if (lstm)
          panel_gemm(B, H, q.np, hp, lhp, q.packed, q.buf, q.np, /*accumulate=*/true);
        else
          panel_gemm(B, H, q.np, hp, lhp, q.packed, q.buf, q.np, /*accumulate=*/false, q.bias);
        T* sv = SV + (keep ? t : 0) * B * 4 * H;
        for (int64_t b = 0; b < B; ++b) {
          T* hout = HC + t * sht + b * shb + q.j0;
          if (lstm) {
            const T* cp = s == 0 ? C0 + b * H : CS + (slot(s - 1, tp) * B + b) * H;
            T* cc = CS + (slot(s, t) * B + b) * H;
            lstm_fwd_row<T, T>(q.buf + b * q.np, q.n, cp + q.j0, sv + b * 4 * H + q.j0, H, cc + q.j0, hout, q.n);
          } else {
            gru_fwd_row<T, T>(q.xbuf + b * q.np, q.n, q.buf + b * q.np, q.n, hp + b * lhp + q.j0,
                              sv + b * 4 * H + q.j0, H, hout, q.n);
          }
        }
      });
  PackCache::get().give(key, std::move(packed));
  if (lstm) r.c_last = cs[slot(T_ - 1, r.reverse ? 0 : T_ - 1)];
}

template <typename T>
void seq_bwd_region(rnn::BwdRec& r) {
  const bool lstm = r.is_lstm;
  const int64_t T_ = r.saved.size(0), B = r.saved.size(1), H = r.w_hh.size(1), G = lstm ? 4 : 3;
  Tensor workspace;
  const int64_t P = num_parts(H);
  auto parts = make_parts<T>(H, P, 1, B, false, workspace, r.saved.options());
  const PackKey key{1, r.w_hh.data_ptr(), nullptr, H, 0, G, P, r.saved.scalar_type()};
  Tensor packed;
  const bool hit = take_packed(key, parts, G * H, 0, [&](const Part<T>& q) { return G * H * q.n; }, packed,
                               r.saved.options());
  const T* W = r.w_hh.data_ptr<T>();
  const T* DO = r.dcols.data_ptr<T>();
  const T* DHL = r.dh_last.data_ptr<T>();
  const T* SV = r.saved.data_ptr<T>();
  const T* CS = lstm ? r.cs.data_ptr<T>() : nullptr;
  const T* C0 = lstm ? r.c0.data_ptr<T>() : nullptr;
  T* DC = lstm ? r.dc.data_ptr<T>() : nullptr;
  const T* HC = lstm ? nullptr : r.hcols.data_ptr<T>();
  const T* H0 = lstm ? nullptr : r.h0.data_ptr<T>();
  T* DHD = lstm ? nullptr : r.dh_dir.data_ptr<T>();
  T* DGI = r.dGi.data_ptr<T>();
  T* DGH = r.dGh.data_ptr<T>();
  const int64_t sdt = r.dcols.stride(0), sdb = r.dcols.stride(1), sdl = r.dh_last.stride(0);
  const int64_t sht = lstm ? 0 : r.hcols.stride(0), shb = lstm ? 0 : r.hcols.stride(1);
  const int64_t sh0 = lstm ? 0 : r.h0.stride(0);
  // The bias gradients, summed over the steps and rows as each thread writes its columns of dG (still in
  // its cache) instead of a pass over the whole (T*B, G*H) dG afterwards; in double, so a long sequence
  // sums no less exactly than ATen's pairwise sum did. Part p's sums at [2 G j0, 2 G (j0 + n)): the GRU's
  // dGi then dGh columns (they differ in the n gate), the LSTM's dG once.
  const bool bias = r.db_i.defined();
  std::vector<double> dbias(bias ? 2 * G * H : 0, 0.0);
  run_region(
      parts, T_,
      [&](Part<T>& q) {  // dh[:, j0:j0+n] = dG W_hh[:, j0:j0+n]: a column slice of W_hh as it is
        if (!same_or_save(q.copy, hit, G * H, q.n, [&](int64_t k) { return W + k * H + q.j0; }))  // rows' slices
          pack_panels(q.packed, G * H, q.n, H, [&](int64_t c) { return W + q.j0 + c; });
      },
      [&](Part<T>& q, int64_t i) {
        const int64_t s = T_ - 1 - i;  // the steps in the reverse of the order they ran
        const int64_t t = r.reverse ? T_ - 1 - s : s;
        const int64_t tn = r.reverse ? t - 1 : t + 1, tp = r.reverse ? t + 1 : t - 1;
        const T* dhr = DHL + q.j0;
        int64_t ldr = sdl;
        if (s < T_ - 1) {  // through W_hh from the step after this one (its dG is complete: barrier)
          panel_gemm(B, G * H, q.np, DGH + tn * B * G * H, G * H, q.packed, q.buf, q.np, /*accumulate=*/false);
          dhr = q.buf;
          ldr = q.np;
        }
        for (int64_t b = 0; b < B; ++b) {
          const T* dho = DO + t * sdt + b * sdb + q.j0;
          const T* sv = SV + (t * B + b) * 4 * H + q.j0;
          if (lstm) {
            const T* cp = (s == 0 ? C0 : CS + tp * B * H) + b * H + q.j0;
            T* dc = DC + b * H + q.j0;
            lstm_bwd_row<T, T>(dho, dhr + b * ldr, dc, sv, H, CS + (t * B + b) * H + q.j0, cp,
                               DGI + (t * B + b) * G * H + q.j0, H, dc, q.n);
          } else {
            const T* hp = (s == 0 ? H0 + b * sh0 : HC + tp * sht + b * shb) + q.j0;
            T* dhd = DHD + b * H + q.j0;
            gru_bwd_row<T, T>(dho, dhr + b * ldr, dhd, sv, H, hp, DGI + (t * B + b) * G * H + q.j0, H,
                              DGH + (t * B + b) * G * H + q.j0, H, dhd, q.n);
          }
        }
        if (bias) {
          double* acc = dbias.data() + 2 * G * q.j0;
          for (int64_t m = 0; m < (lstm ? 1 : 2); ++m)
            for (int64_t b = 0; b < B; ++b)
              for (int64_t g = 0; g < G; ++g) {
                const T* row = (m ? DGH : DGI) + (t * B + b) * G * H + g * H + q.j0;
                double* a = acc + (m * G + g) * q.n;
#pragma omp simd
                for (int64_t j = 0; j < q.n; ++j) a[j] += double(row[j]);
              }
        }
      });
  if (bias) {
    T* DBI = r.db_i.data_ptr<T>();
    T* DBH = r.db_h.data_ptr<T>();
    for (const auto& q : parts)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t j = 0; j < q.n; ++j) {
          const double* acc = dbias.data() + 2 * G * q.j0;
          DBI[g * H + q.j0 + j] = T(acc[g * q.n + j]);
          DBH[g * H + q.j0 + j] = T(acc[((lstm ? 0 : G) + g) * q.n + j]);
        }
  }
  PackCache::get().give(key, std::move(packed));
}

#pragma GCC pop_options

struct CpuPW {
  // fp32 and fp64 run a whole direction in one parallel region; fp16/bf16 keep the per-step loop (their
  // GEMMs want the library's reduced-precision kernels, and the accumulation dtype differs from x's).
  static bool seq_takes(const Tensor& x) { return x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble; }

  static void seq_fwd(rnn::FwdRec& r) {
    // the region reads the weights through raw pointers: any strided view (a user's transposed weight)
    // becomes a dense copy first; a dense tensor passes as it is
    r.w_ih = r.w_ih.contiguous();
    r.w_hh = r.w_hh.contiguous();
    if (r.b_ih.defined()) r.b_ih = r.b_ih.contiguous();
    if (r.b_hh.defined()) r.b_hh = r.b_hh.contiguous();
    if (r.x.scalar_type() == at::kFloat)
      seq_fwd_region<float>(r);
    else
      seq_fwd_region<double>(r);
  }

  static void seq_bwd(rnn::BwdRec& r) {
    r.w_hh = r.w_hh.contiguous();
    if (r.dGi.scalar_type() == at::kFloat)
      seq_bwd_region<float>(r);
    else
      seq_bwd_region<double>(r);
  }

  static void lstm_fwd(const Tensor& pre, const Tensor& c_prev, Tensor& gates, Tensor& c, Tensor& h) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "pydl_lstm_fwd_cpu",
                                    [&] { lstm_fwd_impl<scalar_t>(pre, c_prev, gates, c, h); });
  }

  static void lstm_bwd(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dc, const Tensor& gates,
                       const Tensor& c, const Tensor& c_prev, Tensor& dG, Tensor& dc_prev) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dG.scalar_type(), "pydl_lstm_bwd_cpu",
                                    [&] { lstm_bwd_impl<scalar_t>(dh_out, dh_rec, dc, gates, c, c_prev, dG,
                                                                  dc_prev); });
  }

  static void gru_fwd(const Tensor& xg, const Tensor& hg, const Tensor& h_prev, Tensor& ws, Tensor& h) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "pydl_gru_fwd_cpu",
                                    [&] { gru_fwd_impl<scalar_t>(xg, hg, h_prev, ws, h); });
  }

  static void gru_bwd(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dh_dir, const Tensor& ws,
                      const Tensor& h_prev, Tensor& dGi, Tensor& dGh, Tensor& dh_dir_out) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dGi.scalar_type(), "pydl_gru_bwd_cpu",
                                    [&] { gru_bwd_impl<scalar_t>(dh_out, dh_rec, dh_dir, ws, h_prev, dGi, dGh,
                                                                 dh_dir_out); });
  }
};

constexpr auto kCPU = c10::DeviceType::CPU;

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cpu(const Tensor& x, const Tensor& hx, const Tensor& cx,
                                                 const Tensor& w_ih, const Tensor& w_hh,
                                                 const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  rnn::check_cell(4, x, hx, &cx, w_ih, w_hh, b_ih, b_hh, kCPU, "lstm_cell");
  return rnn::lstm_cell<CpuPW>(x, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& x, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates, const Tensor& cy, bool need_dx, bool need_dh) {
  rnn::check_cell_backward(4, grad_hy, &grad_cy, x, hx, &cx, w_ih, w_hh, gates, &cy, kCPU, "lstm_cell_backward");
  return rnn::lstm_cell_backward<CpuPW>(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx,
                                                     need_dh);
}

std::tuple<Tensor, Tensor> gru_cell_cpu(const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                        const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  rnn::check_cell(3, x, hx, nullptr, w_ih, w_hh, b_ih, b_hh, kCPU, "gru_cell");
  return rnn::gru_cell<CpuPW>(x, hx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& ws, bool need_dx, bool need_dh) {
  rnn::check_cell_backward(3, grad_hy, nullptr, x, hx, nullptr, w_ih, w_hh, ws, nullptr, kCPU, "gru_cell_backward");
  return rnn::gru_cell_backward<CpuPW>(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cpu(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                            at::TensorList weights, const std::optional<Tensor>& mask,
                                                            int64_t L, bool bidir, bool has_bias,
                                                            bool need_reserve) {
  rnn::check_seq(4, x, h0, &c0, weights, mask, L, bidir, has_bias, kCPU, "lstm");
  return rnn::seq_forward<CpuPW>(true, x, h0, c0, weights, mask, L, bidir, has_bias, need_reserve);
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& x, const Tensor& h0,
    const Tensor& c0, at::TensorList weights, const std::optional<Tensor>& mask, const Tensor& out,
    const Tensor& reserve, const Tensor& layer_outs, int64_t L, bool bidir, bool has_bias, bool need_dx) {
  rnn::check_seq_backward(true, grad_out, grad_hn, &grad_cn, x, h0, &c0, weights, mask, out, reserve, layer_outs, L,
                           bidir, has_bias, kCPU, "lstm_backward");
  return rnn::seq_backward<CpuPW>(true, grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve,
                                  layer_outs, L, bidir, has_bias, need_dx);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_cpu(const Tensor& x, const Tensor& h0, at::TensorList weights,
                                                   const std::optional<Tensor>& mask, int64_t L, bool bidir,
                                                   bool has_bias, bool need_reserve) {
  rnn::check_seq(3, x, h0, nullptr, weights, mask, L, bidir, has_bias, kCPU, "gru");
  auto r = rnn::seq_forward<CpuPW>(false, x, h0, Tensor(), weights, mask, L, bidir, has_bias, need_reserve);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r), std::get<4>(r)};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& x, const Tensor& h0, at::TensorList weights,
    const std::optional<Tensor>& mask, const Tensor& out, const Tensor& reserve, const Tensor& layer_outs, int64_t L,
    bool bidir, bool has_bias, bool need_dx) {
  rnn::check_seq_backward(false, grad_out, grad_hn, nullptr, x, h0, nullptr, weights, mask, out, reserve, layer_outs,
                           L, bidir, has_bias, kCPU, "gru_backward");
  auto r = rnn::seq_backward<CpuPW>(false, grad_out, grad_hn, Tensor(), x, h0, Tensor(), weights, mask, out, reserve,
                                    layer_outs, L, bidir, has_bias, need_dx);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r)};
}

}  // namespace
}  // namespace pydl

// The same schemas as pydl::<op> minus the trailing `str backend` (kept in sync with pydl/ops/rnn.py).
TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) {
  for (const char* s : pydl::schema::rnn) m.def(s);  // csrc/schemas.h
}

TORCH_LIBRARY_IMPL(pydl_cpu, CPU, m) {
  m.impl("lstm_cell", &pydl::lstm_cell_cpu);
  m.impl("lstm_cell_backward", &pydl::lstm_cell_backward_cpu);
  m.impl("gru_cell", &pydl::gru_cell_cpu);
  m.impl("gru_cell_backward", &pydl::gru_cell_backward_cpu);
  m.impl("lstm", &pydl::lstm_cpu);
  m.impl("lstm_backward", &pydl::lstm_backward_cpu);
  m.impl("gru", &pydl::gru_cpu);
  m.impl("gru_backward", &pydl::gru_backward_cpu);
}
