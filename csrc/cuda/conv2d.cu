// conv2d on the GPU: implicit GEMM with shared-memory tiles -- forward (fused bias + activation epilogue),
// grad input, grad weight (split over pixels) and grad bias. No torch headers: see conv2d.h.
//
// The three convolutions are three matrix products C[M x N] = A[M x K] @ B[K x N] whose operands are *views*
// of the tensors, computed element by element from (m, k) and (k, n) (pydl/ops/conv2d.py has the math):
//
//   mode     M                     N                     K                        A                   B
//   kFwd     N*Ho*Wo out pixels    Cout/g out channels   Cg*kh*kw taps            im2col(x)           w
//   kDgrad   N*H*W input pixels    Cg in channels        Cout/g*kh*kw             dz, gathered        w
//   kWgrad   Cout/g out channels   Cg*kh*kw taps         a range of out pixels    dz^T                im2col(x)
//
// One kernel template serves all three: a block loads a BM x BK tile of A and a BK x BN tile of B into shared
// memory (each thread computes the addresses of its elements: which image, row, column, channel; padding and
// ragged edges load 0), multiplies them, and moves to the next K-slice. Tiles are reused from shared memory
// BN (resp. BM) times, which is the whole point: global memory is read once per tile, not once per FMA.
//
// Two inner engines:
//   * SIMT (fp32 exact, fp64): 256 threads, each owning a 4x4 sub-tile of the 64x64 block in registers;
//     rows ty + 16*i and columns tx + 16*j, so a warp reads shared memory without bank conflicts.
//   * Tensor cores through WMMA (fp16, bf16; fp32 as TF32 only when allow_tf32): 4 warps, each a 32x32
//     quarter of the 64x64 block = 2x2 fragments of 16x16, fp32 accumulators. The K-slice is 32 wide.
//     Shared rows are padded by 16 bytes so consecutive rows start in different banks.
// The epilogue runs from registers (SIMT) or from the accumulators staged through shared memory (WMMA):
// bias + activation for the forward, plain stores for the gradients.
//
// Depthwise convs (one input and one output channel per group) skip the GEMM machinery: direct kernels, one
// thread per output / grad-input element, one block per weight element for grad_w (see dw_fwd_elem).
//
// The activation's backward dz = act'(z) * dy is applied while A is loaded (dgrad, wgrad) and in the bias
// reduction: dz is never stored. grad_w is split over pixel ranges (blockIdx.z = group * split + range)
// written to a workspace and summed in a fixed order by the caller: deterministic, no float atomics.
//
// What a production kernel adds on top (and why this one is simpler): cp.async double buffering so the next
// tile loads while this one multiplies; incremental (not per-element) index math; 128x128 tiles with
// vectorised 16-byte loads; mma.sync with ldmatrix instead of WMMA. They are the difference between ~50% and
// ~90% of cuDNN; the structure above is the part to understand first.
//
// Index math is int64 for anything that addresses a tensor (N*C*H*W can pass 2^31); tap indices are int.
//
// Why one long file: the three implicit-GEMM kernels share the tile loaders and the index math that the
// tests run on the host; the depthwise kernels at the end share the epilogue.
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "acc.h"
#include "activation.h"
#include "conv2d.h"

namespace pydl {
namespace cuda {
namespace {

using namespace nvcuda;

// The index math below is __host__ __device__: a CPU-only machine can run it in a host loop and check it
// against torch (tests/test_conv2d.py::test_cuda_index_math_on_host) before any GPU sees it.
#define PYDL_CONV_HD __host__ __device__ __forceinline__

// a / b for a >= 0, b > 0. A 64-bit division is a long software sequence on a GPU (~4x a 32-bit one) and the
// loaders below divide several times per element: use 32 bits whenever the operands fit (a uniform branch).
PYDL_CONV_HD int64_t qdiv(int64_t a, int64_t b) {
  return (a <= 0x7fffffff && b <= 0x7fffffff) ? int64_t(uint32_t(a) / uint32_t(b)) : a / b;
}

enum Mode : int { kFwd = 0, kDgrad = 1, kWgrad = 2 };

// ---- problem sizes per mode ------------------------------------------------------------------------------
template <int MODE> PYDL_CONV_HD int64_t size_m(const ConvArgs& a) {
  return MODE == kFwd ? a.N * a.Ho * a.Wo : MODE == kDgrad ? a.N * a.H * a.W : a.Cog;
}
template <int MODE> PYDL_CONV_HD int64_t size_n(const ConvArgs& a) {
  return MODE == kFwd ? a.Cog : MODE == kDgrad ? a.Cg : a.Cg * a.KH * a.KW;
}
// K of this block: for kWgrad, the length of its pixel range
template <int MODE> PYDL_CONV_HD int64_t size_k(const ConvArgs& a, int64_t s) {
  if (MODE == kFwd) return a.Cg * a.KH * a.KW;
  if (MODE == kDgrad) return a.Cog * a.KH * a.KW;
  const int64_t P = a.N * a.Ho * a.Wo, begin = s * a.per_split;
  const int64_t end = begin + a.per_split < P ? begin + a.per_split : P;
  return end > begin ? end - begin : 0;
}

// tap k -> (input channel, kernel row, kernel column), in the layout's order
PYDL_CONV_HD void tap(const ConvArgs& a, int k, int& ci, int& ki, int& kj) {
  const int KH = int(a.KH), KW = int(a.KW), Cg = int(a.Cg);
  if (a.ci_inner) {
    ci = k % Cg;
    const int r = k / Cg;
    ki = r / KW;
    kj = r - ki * KW;
  } else {
    ci = k / (KH * KW);
    const int r = k - ci * KH * KW;
    ki = r / KW;
    kj = r - ki * KW;
  }
}

// dz at element offset `off` of grad_y: the activation's backward applied on the fly
template <typename T>
PYDL_CONV_HD typename Acc<T>::type load_dz(const ConvArgs& a, int64_t off) {
  using acc_t = typename Acc<T>::type;
  const acc_t d = to_acc(static_cast<const T*>(a.dy)[off]);
  if (a.act == kActNone) return d;
  const acc_t z = to_acc(static_cast<const T*>(a.zs)[off]);
  const Act<acc_t> act{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
  return act.backward(d, z);
}

// ---- operand element loaders (0 outside the problem or in the padding) -------------------------------------
// Row context of A for kFwd / kDgrad: the part of an element's address that depends only on its row m (which
// image, which output/input pixel). Threads whose row stays fixed across the K loop compute it once (see the
// kernels); the per-element work is then the tap decomposition and the padding test.
struct RowA {
  int64_t base;  // kFwd: offset of x[n, g*Cg, 0, 0]; kDgrad: offset of dy[n, g*Cog, 0, 0]
  int64_t r0;    // kFwd: ho*sh - ph; kDgrad: h
  int64_t r1;    // kFwd: wo*sw - pw; kDgrad: w
  bool ok;       // m < M
};

template <int MODE>
PYDL_CONV_HD RowA row_a(const ConvArgs& a, int64_t g, int64_t m, int64_t M) {
  RowA r{0, 0, 0, m < M};
  if (!r.ok) return r;
  if (MODE == kFwd) {  // m = (n, ho, wo)
    const int64_t hw = a.Ho * a.Wo;
    const int64_t n = qdiv(m, hw), rem = m - n * hw, ho = qdiv(rem, a.Wo), wo = rem - ho * a.Wo;
    r.base = n * a.sx[0] + g * a.Cg * a.sx[1];
    r.r0 = ho * a.sh - a.ph;
    r.r1 = wo * a.sw - a.pw;
  } else {  // kDgrad: m = (n, h, w)
    const int64_t hw = a.H * a.W;
    const int64_t n = qdiv(m, hw), rem = m - n * hw, h = qdiv(rem, a.W), w = rem - h * a.W;
    r.base = n * a.sy[0] + g * a.Cog * a.sy[1];
    r.r0 = h;
    r.r1 = w;
  }
  return r;
}

template <typename T, int MODE>
PYDL_CONV_HD typename Acc<T>::type load_a_row(const ConvArgs& a, const RowA& r, int64_t k, int64_t K) {
  using acc_t = typename Acc<T>::type;
  if (!r.ok || k >= K) return acc_t(0);
  if (MODE == kFwd) {  // im2col(x)[m, k = tap]
    int ci, ki, kj;
    tap(a, int(k), ci, ki, kj);
    const int64_t hi = r.r0 + ki * a.dh, wi = r.r1 + kj * a.dw;
    if (hi < 0 || hi >= a.H || wi < 0 || wi >= a.W) return acc_t(0);
    return to_acc(static_cast<const T*>(a.x)[r.base + ci * a.sx[1] + hi * a.sx[2] + wi * a.sx[3]]);
  } else {  // kDgrad: dz gathered, k = (o, i, j)
    const int KK = int(a.KH * a.KW);
    const int o = int(k) / KK, rk = int(k) - o * KK, ki = rk / int(a.KW), kj = rk - ki * int(a.KW);
    const int64_t th = r.r0 + a.ph - ki * a.dh, tw = r.r1 + a.pw - kj * a.dw;  // = ho*sh, wo*sw if that tap
    if (th < 0 || tw < 0) return acc_t(0);
    const int64_t ho = a.sh == 1 ? th : qdiv(th, a.sh), wo = a.sw == 1 ? tw : qdiv(tw, a.sw);
    if (ho * a.sh != th || wo * a.sw != tw || ho >= a.Ho || wo >= a.Wo) return acc_t(0);
    return load_dz<T>(a, r.base + o * a.sy[1] + ho * a.sy[2] + wo * a.sy[3]);
  }
}

template <typename T, int MODE>
PYDL_CONV_HD typename Acc<T>::type load_a(const ConvArgs& a, int64_t g, int64_t s, int64_t m,
                                          int64_t k, int64_t M, int64_t K) {
  using acc_t = typename Acc<T>::type;
  if (MODE != kWgrad) return load_a_row<T, MODE>(a, row_a<MODE>(a, g, m, M), k, K);
  if (m >= M || k >= K) return acc_t(0);
  // kWgrad, dz^T: m = output channel of the group, k = pixel of this block's range
  const int64_t p = s * a.per_split + k, hw = a.Ho * a.Wo;
  const int64_t n = qdiv(p, hw), r = p - n * hw, ho = qdiv(r, a.Wo), wo = r - ho * a.Wo;
  return load_dz<T>(a, n * a.sy[0] + (g * a.Cog + m) * a.sy[1] + ho * a.sy[2] + wo * a.sy[3]);
}

template <typename T, int MODE>
PYDL_CONV_HD typename Acc<T>::type load_b(const ConvArgs& a, int64_t g, int64_t s, int64_t k,
                                                        int64_t n, int64_t K, int64_t N) {
  using acc_t = typename Acc<T>::type;
  if (k >= K || n >= N) return acc_t(0);
  const T* w = static_cast<const T*>(a.w);
  if (MODE == kFwd) {  // w[(g*Cog + n), ci, ki, kj]
    int ci, ki, kj;
    tap(a, int(k), ci, ki, kj);
    return to_acc(w[(g * a.Cog + n) * (a.Cg * a.KH * a.KW) + (ci * a.KH + ki) * a.KW + kj]);
  } else if (MODE == kDgrad) {  // k = (o, i, j), n = input channel: w[(g*Cog + o), n, i, j]
    const int64_t KK = a.KH * a.KW, o = qdiv(k, KK), rk = k - o * KK;
    return to_acc(w[((g * a.Cog + o) * a.Cg + n) * KK + rk]);
  } else {  // im2col(x)[pixel k of the range, tap n]
    const int64_t p = s * a.per_split + k, hw = a.Ho * a.Wo;
    const int64_t nn = qdiv(p, hw), r = p - nn * hw, ho = qdiv(r, a.Wo), wo = r - ho * a.Wo;
    int ci, ki, kj;
    tap(a, int(n), ci, ki, kj);
    const int64_t hi = ho * a.sh - a.ph + ki * a.dh, wi = wo * a.sw - a.pw + kj * a.dw;
    if (hi < 0 || hi >= a.H || wi < 0 || wi >= a.W) return acc_t(0);
    return to_acc(static_cast<const T*>(a.x)[nn * a.sx[0] + (g * a.Cg + ci) * a.sx[1] + hi * a.sx[2] + wi * a.sx[3]]);
  }
}

// ---- the epilogue: one finished element of C --------------------------------------------------------------
template <typename T, int MODE>
PYDL_CONV_HD void store_c(const ConvArgs& a, int64_t g, int64_t s, int64_t m, int64_t n,
                                        typename Acc<T>::type v) {
  using acc_t = typename Acc<T>::type;
  if (MODE == kFwd) {  // bias + activation, y (and z) at output pixel m, channel g*Cog + n
    const int64_t c = g * a.Cog + n;
    if (a.b != nullptr) v += to_acc(static_cast<const T*>(a.b)[c]);
    const int64_t hw = a.Ho * a.Wo;
    const int64_t nn = qdiv(m, hw), r = m - nn * hw, ho = qdiv(r, a.Wo), wo = r - ho * a.Wo;
    const int64_t off = nn * a.sy[0] + c * a.sy[1] + ho * a.sy[2] + wo * a.sy[3];
    if (a.save_z) static_cast<T*>(a.z)[off] = from_acc<T>(v);
    const Act<acc_t> act{a.act, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
    static_cast<T*>(a.y)[off] = from_acc<T>(act.forward(v));
  } else if (MODE == kDgrad) {
    const int64_t hw = a.H * a.W;
    const int64_t nn = qdiv(m, hw), r = m - nn * hw, h = qdiv(r, a.W), w = r - h * a.W;
    static_cast<T*>(a.dx)[nn * a.sdx[0] + (g * a.Cg + n) * a.sdx[1] + h * a.sdx[2] + w * a.sdx[3]] = from_acc<T>(v);
  } else {  // partial grad_w, stored in the weight's (ci, i, j) order whatever the tap order
    int ci, ki, kj;
    tap(a, int(n), ci, ki, kj);
    const int64_t K = a.Cg * a.KH * a.KW;
    static_cast<acc_t*>(a.ws)[(s * a.Co + g * a.Cog + m) * K + (ci * a.KH + ki) * a.KW + kj] = v;
  }
}

// Which way consecutive threads walk a tile, so that their global loads/stores are coalesced: along m for
// NCHW pixels (consecutive wo are adjacent), along k where the reduction index is the contiguous one.
template <int MODE> PYDL_CONV_HD bool a_along_k(const ConvArgs& a) {
  return MODE == kWgrad || (MODE == kFwd && a.ci_inner);
}
template <int MODE> PYDL_CONV_HD bool c_along_n(const ConvArgs& a) {
  return MODE == kWgrad || (MODE == kFwd && a.sy[1] == 1) || (MODE == kDgrad && a.sdx[1] == 1);
}

// ---- depthwise (Cg == Cout/g == 1): direct, one thread per element ---------------------------------------
// A depthwise conv is G tiny GEMMs with N = 1 and K = kh*kw: a 64x64 tile would do 1/64 useful work. So it
// gets direct kernels: each output (or grad-input) element sums its kh*kw taps; each weight element reduces
// over all pixels in one block. Element e is decomposed with the channel fastest for channels_last (adjacent
// threads then touch adjacent addresses) and the column fastest for NCHW.
PYDL_CONV_HD void dw_split(int64_t e, int64_t C, int64_t H, int64_t W, bool c_fast, int64_t& n, int64_t& c,
                           int64_t& h, int64_t& w) {
  if (c_fast) {
    c = e % C; e /= C; w = e % W; e /= W; h = e % H; n = e / H;
  } else {
    w = e % W; e /= W; h = e % H; e /= H; c = e % C; n = e / C;
  }
}

template <typename T>
PYDL_CONV_HD void dw_fwd_elem(const ConvArgs& a, int64_t e) {
  using acc_t = typename Acc<T>::type;
  int64_t n, c, ho, wo;
  dw_split(e, a.Co, a.Ho, a.Wo, a.sy[1] == 1, n, c, ho, wo);
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.w) + c * a.KH * a.KW;
  const T* xc = x + n * a.sx[0] + c * a.sx[1];
  acc_t v = 0;
  for (int64_t i = 0; i < a.KH; ++i) {
    const int64_t hi = ho * a.sh - a.ph + i * a.dh;
    if (hi < 0 || hi >= a.H) continue;
    for (int64_t j = 0; j < a.KW; ++j) {
      const int64_t wi = wo * a.sw - a.pw + j * a.dw;
      if (wi < 0 || wi >= a.W) continue;
      v += to_acc(w[i * a.KW + j]) * to_acc(xc[hi * a.sx[2] + wi * a.sx[3]]);
    }
  }
  store_c<T, kFwd>(a, c, 0, (n * a.Ho + ho) * a.Wo + wo, 0, v);  // group c, channel 0 of the group
}

template <typename T>
PYDL_CONV_HD void dw_dgrad_elem(const ConvArgs& a, int64_t e) {
  using acc_t = typename Acc<T>::type;
  int64_t n, c, h, w;
  dw_split(e, a.C, a.H, a.W, a.sdx[1] == 1, n, c, h, w);
  const T* wt = static_cast<const T*>(a.w) + c * a.KH * a.KW;
  acc_t v = 0;
  for (int64_t i = 0; i < a.KH; ++i) {
    const int64_t th = h + a.ph - i * a.dh;
    if (th < 0) continue;
    const int64_t ho = qdiv(th, a.sh);
    if (ho * a.sh != th || ho >= a.Ho) continue;
    for (int64_t j = 0; j < a.KW; ++j) {
      const int64_t tw = w + a.pw - j * a.dw;
      if (tw < 0) continue;
      const int64_t wo = qdiv(tw, a.sw);
      if (wo * a.sw != tw || wo >= a.Wo) continue;
      v += to_acc(wt[i * a.KW + j]) * load_dz<T>(a, n * a.sy[0] + c * a.sy[1] + ho * a.sy[2] + wo * a.sy[3]);
    }
  }
  static_cast<T*>(a.dx)[n * a.sdx[0] + c * a.sdx[1] + h * a.sdx[2] + w * a.sdx[3]] = from_acc<T>(v);
}

// one term of grad_w[c, tap]: dz at output pixel p times the input value that tap read
template <typename T>
PYDL_CONV_HD typename Acc<T>::type dw_wgrad_term(const ConvArgs& a, int64_t c, int64_t tap, int64_t p) {
  using acc_t = typename Acc<T>::type;
  const int64_t hw = a.Ho * a.Wo, n = qdiv(p, hw), r = p - n * hw, ho = qdiv(r, a.Wo), wo = r - ho * a.Wo;
  const int64_t i = tap / a.KW, j = tap - i * a.KW;
  const int64_t hi = ho * a.sh - a.ph + i * a.dh, wi = wo * a.sw - a.pw + j * a.dw;
  if (hi < 0 || hi >= a.H || wi < 0 || wi >= a.W) return acc_t(0);
  const acc_t xv = to_acc(static_cast<const T*>(a.x)[n * a.sx[0] + c * a.sx[1] + hi * a.sx[2] + wi * a.sx[3]]);
  return xv * load_dz<T>(a, n * a.sy[0] + c * a.sy[1] + ho * a.sy[2] + wo * a.sy[3]);
}

PYDL_CONV_HD bool is_depthwise(const ConvArgs& a) { return a.Cg == 1 && a.Cog == 1; }

#ifndef PYDL_CONV_INDEX_MATH_ONLY  // (the host-side check compiles only what is above this line)

// =========================================================================================================
// SIMT engine: fp32 (exact) and fp64
// =========================================================================================================
constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16, kSimtThreads = 256;
static_assert(kSimtThreads % kSimtBM == 0, "a thread's A row must stay fixed (RowA hoisting)");

template <typename T, int MODE>
__global__ void __launch_bounds__(kSimtThreads) conv_simt_kernel(ConvArgs a) {
  using acc_t = typename Acc<T>::type;
  constexpr int BM = kSimtBM, BN = kSimtBN, BK = kSimtBK;
  __shared__ acc_t As[BK][BM + 1];  // +1: the k-major stores of a k-walking tile hit different banks
  __shared__ acc_t Bs[BK][BN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t g = MODE == kWgrad ? blockIdx.z / a.split : blockIdx.z;
  const int64_t s = MODE == kWgrad ? blockIdx.z % a.split : 0;
  const int64_t M = size_m<MODE>(a), N = size_n<MODE>(a), K = size_k<MODE>(a, s);
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const bool ak = a_along_k<MODE>(a);
  // Walking A along m, thread tid always loads row tid % BM (kSimtThreads is a multiple of BM): its row's
  // image/pixel decomposition is computed once here instead of once per element per K-slice.
  const RowA ra = row_a<MODE == kWgrad ? kFwd : MODE>(a, g, m0 + tid % BM, M);

  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int i = 0; i < (BM * BK) / kSimtThreads; ++i) {
      const int e = tid + i * kSimtThreads;
      const int mm = ak ? e / BK : e % BM, kk = ak ? e % BK : e / BM;
      As[kk][mm] = (ak || MODE == kWgrad) ? load_a<T, MODE>(a, g, s, m0 + mm, k0 + kk, M, K)
                                          : load_a_row<T, MODE == kWgrad ? kFwd : MODE>(a, ra, k0 + kk, K);
    }
#pragma unroll
    for (int i = 0; i < (BN * BK) / kSimtThreads; ++i) {
      const int e = tid + i * kSimtThreads;
      const int kk = e % BK, nn = e / BK;  // along k: the weight and the pixels of wgrad are contiguous in k
      Bs[kk][nn] = load_b<T, MODE>(a, g, s, k0 + kk, n0 + nn, K, N);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t ar[4], br[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ar[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) br[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) store_c<T, MODE>(a, g, s, m, n, acc[i][j]);
    }
}

// =========================================================================================================
// Tensor-core engine (WMMA): fp16 / bf16 with fp32 accumulation; fp32 as TF32 when allowed
// =========================================================================================================
constexpr int kTcBM = 64, kTcBN = 64, kTcBK = 32, kTcThreads = 128;
static_assert(kTcThreads % kTcBM == 0, "a thread's A row must stay fixed (RowA hoisting)");

template <typename T> struct Frag { using type = T; static constexpr int kStep = 16; };   // fp16, bf16
template <> struct Frag<float> { using type = wmma::precision::tf32; static constexpr int kStep = 8; };

template <typename T> __device__ __forceinline__ T to_smem(float v) { return from_acc<T>(v); }

template <typename T, int MODE>
__global__ void __launch_bounds__(kTcThreads) conv_tc_kernel(ConvArgs a) {
  using FT = typename Frag<T>::type;
  constexpr int BM = kTcBM, BN = kTcBN, BK = kTcBK, KS = Frag<T>::kStep;
  constexpr int PAD = 16 / sizeof(T);  // 16 bytes of padding per row: rows start in different banks
  constexpr int LDA = BK + PAD, LDB = BN + PAD, LDC = BN + 4;
  constexpr int AB_BYTES = (BM * LDA + BK * LDB) * sizeof(T), C_BYTES = BM * LDC * sizeof(float);
  // the A/B tiles and the fp32 staging of C are never live together: share the memory
  __shared__ __align__(128) unsigned char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + BM * LDA;
  float* Cs = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;  // this warp's 32x32 quarter of the block tile
  const int64_t g = MODE == kWgrad ? blockIdx.z / a.split : blockIdx.z;
  const int64_t s = MODE == kWgrad ? blockIdx.z % a.split : 0;
  const int64_t M = size_m<MODE>(a), N = size_n<MODE>(a), K = size_k<MODE>(a, s);
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const bool ak = a_along_k<MODE>(a);
  const RowA ra = row_a<MODE == kWgrad ? kFwd : MODE>(a, g, m0 + tid % BM, M);  // as in the SIMT kernel

  wmma::fragment<wmma::accumulator, 16, 16, KS, float> fc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(fc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll 4
    for (int i = 0; i < (BM * BK) / kTcThreads; ++i) {
      const int e = tid + i * kTcThreads;
      const int mm = ak ? e / BK : e % BM, kk = ak ? e % BK : e / BM;
      As[mm * LDA + kk] = to_smem<T>((ak || MODE == kWgrad)
                                         ? load_a<T, MODE>(a, g, s, m0 + mm, k0 + kk, M, K)
                                         : load_a_row<T, MODE == kWgrad ? kFwd : MODE>(a, ra, k0 + kk, K));
    }
#pragma unroll 4
    for (int i = 0; i < (BN * BK) / kTcThreads; ++i) {
      const int e = tid + i * kTcThreads;
      const int kk = e % BK, nn = e / BK;
      Bs[kk * LDB + nn] = to_smem<T>(load_b<T, MODE>(a, g, s, k0 + kk, n0 + nn, K, N));
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += KS) {
      wmma::fragment<wmma::matrix_a, 16, 16, KS, FT, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, KS, FT, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * LDA + kk, LDA);
        if constexpr (sizeof(T) == 4) {  // TF32: round the fp32 values to tf32 (10-bit mantissa)
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(fb[j], Bs + kk * LDB + wn * 32 + j * 16, LDB);
        if constexpr (sizeof(T) == 4) {
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(fc[i][j], fa[i], fb[j], fc[i][j]);
    }
    __syncthreads();
  }

  // stage the accumulators through shared memory: the fragment's element -> (row, col) map is opaque
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, fc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  const bool cn = c_along_n<MODE>(a);
  for (int e = tid; e < BM * BN; e += kTcThreads) {
    const int mm = cn ? e / BN : e % BM, nn = cn ? e % BN : e / BM;
    const int64_t m = m0 + mm, n = n0 + nn;
    if (m < M && n < N) store_c<T, MODE>(a, g, s, m, n, Cs[mm * LDC + nn]);
  }
}

// =========================================================================================================
// grad bias: one block per output channel, a fixed-order tree reduction of dz over all pixels
// =========================================================================================================
template <typename T>
__global__ void __launch_bounds__(256) conv_bgrad_kernel(ConvArgs a) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t red[256];
  const int64_t c = blockIdx.x;
  const int64_t hw = a.Ho * a.Wo, P = a.N * hw;
  acc_t sum = 0;
  for (int64_t p = threadIdx.x; p < P; p += 256) {
    const int64_t n = qdiv(p, hw), r = p - n * hw, ho = qdiv(r, a.Wo), wo = r - ho * a.Wo;
    sum += load_dz<T>(a, n * a.sy[0] + c * a.sy[1] + ho * a.sy[2] + wo * a.sy[3]);
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int d = 128; d > 0; d >>= 1) {
    if (threadIdx.x < d) red[threadIdx.x] += red[threadIdx.x + d];
    __syncthreads();
  }
  if (threadIdx.x == 0) static_cast<T*>(a.gb)[c] = from_acc<T>(red[0]);
}

// =========================================================================================================
// launchers
// =========================================================================================================
template <typename T, int MODE>
cudaError_t launch_mode(const ConvArgs& a, cudaStream_t stream) {
  const int64_t M = size_m<MODE>(a), N = size_n<MODE>(a);
  const int64_t Z = MODE == kWgrad ? a.G * a.split : a.G;
  if (M == 0 || N == 0 || Z == 0) return cudaSuccess;
  const bool simt = sizeof(T) == 8 || (sizeof(T) == 4 && !a.allow_tf32);
  const int BM = simt ? kSimtBM : kTcBM, BN = simt ? kSimtBN : kTcBN;
  const int64_t gx = (M + BM - 1) / BM, gy = (N + BN - 1) / BN;
  if (gx > 0x7fffffff || gy > 65535 || Z > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(Z));
  if constexpr (sizeof(T) == 8) {
    conv_simt_kernel<T, MODE><<<grid, kSimtThreads, 0, stream>>>(a);
  } else if constexpr (sizeof(T) == 4) {
    if (simt) conv_simt_kernel<T, MODE><<<grid, kSimtThreads, 0, stream>>>(a);
    else conv_tc_kernel<T, MODE><<<grid, kTcThreads, 0, stream>>>(a);
  } else {
    conv_tc_kernel<T, MODE><<<grid, kTcThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <int MODE>
cudaError_t dispatch(const ConvArgs& a, cudaStream_t stream) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return launch_mode<T, MODE>(a, stream))
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_bgrad(const ConvArgs& a, cudaStream_t stream) {
  if (a.Co == 0) return cudaSuccess;
  if (a.Co > 0x7fffffff) return cudaErrorInvalidConfiguration;
  conv_bgrad_kernel<T><<<unsigned(a.Co), 256, 0, stream>>>(a);
  return cudaGetLastError();
}

// ---- depthwise kernels: grid-stride loops over elements; grad_w one block per (channel, tap) ------------
template <typename T>
__global__ void __launch_bounds__(256) dw_fwd_kernel(ConvArgs a, int64_t total) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)
    dw_fwd_elem<T>(a, e);
}

template <typename T>
__global__ void __launch_bounds__(256) dw_dgrad_kernel(ConvArgs a, int64_t total) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)
    dw_dgrad_elem<T>(a, e);
}

template <typename T>
__global__ void __launch_bounds__(256) dw_wgrad_kernel(ConvArgs a) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t red[256];
  const int64_t KK = a.KH * a.KW, c = blockIdx.x / KK, tap = blockIdx.x % KK, P = a.N * a.Ho * a.Wo;
  acc_t sum = 0;
  for (int64_t p = threadIdx.x; p < P; p += 256) sum += dw_wgrad_term<T>(a, c, tap, p);
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int d = 128; d > 0; d >>= 1) {  // fixed-order tree: deterministic
    if (threadIdx.x < d) red[threadIdx.x] += red[threadIdx.x + d];
    __syncthreads();
  }
  if (threadIdx.x == 0) static_cast<acc_t*>(a.ws)[c * KK + tap] = red[0];  // split 0 (the glue uses 1 split)
}

inline unsigned elem_blocks(int64_t total, int num_sms_hint) {
  const int64_t b = (total + 255) / 256, cap = int64_t(num_sms_hint) * 32;
  return unsigned(b < cap ? (b > 0 ? b : 1) : cap);
}

template <typename T>
cudaError_t launch_dw(const ConvArgs& a, int mode, cudaStream_t stream) {
  if (mode == kFwd) {
    const int64_t total = a.N * a.Co * a.Ho * a.Wo;
    if (total) dw_fwd_kernel<T><<<elem_blocks(total, 1024), 256, 0, stream>>>(a, total);
  } else if (mode == kDgrad) {
    const int64_t total = a.N * a.C * a.H * a.W;
    if (total) dw_dgrad_kernel<T><<<elem_blocks(total, 1024), 256, 0, stream>>>(a, total);
  } else {
    const int64_t blocks = a.Co * a.KH * a.KW;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    if (blocks) dw_wgrad_kernel<T><<<unsigned(blocks), 256, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t dispatch_dw(const ConvArgs& a, int mode, cudaStream_t stream) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return launch_dw<T>(a, mode, stream))
  return cudaErrorInvalidValue;
}

#endif  // PYDL_CONV_INDEX_MATH_ONLY
}  // namespace

#ifndef PYDL_CONV_INDEX_MATH_ONLY
cudaError_t conv2d_forward_launch(const ConvArgs& a, cudaStream_t stream) {
  return is_depthwise(a) ? dispatch_dw(a, kFwd, stream) : dispatch<kFwd>(a, stream);
}
cudaError_t conv2d_dgrad_launch(const ConvArgs& a, cudaStream_t stream) {
  return is_depthwise(a) ? dispatch_dw(a, kDgrad, stream) : dispatch<kDgrad>(a, stream);
}
cudaError_t conv2d_wgrad_launch(const ConvArgs& a, cudaStream_t stream) {
  return is_depthwise(a) ? dispatch_dw(a, kWgrad, stream) : dispatch<kWgrad>(a, stream);
}

cudaError_t conv2d_bgrad_launch(const ConvArgs& a, cudaStream_t stream) {
  PYDL_DTYPE_SWITCH(a.dtype, T, return launch_bgrad<T>(a, stream))
  return cudaErrorInvalidValue;
}

#endif  // PYDL_CONV_INDEX_MATH_ONLY

}  // namespace cuda
}  // namespace pydl
