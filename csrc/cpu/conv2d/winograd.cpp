// Winograd F(4x4, 3x3) convolution (Lavin & Gray 2016) for 3x3 stride-1 layers: forward (with the fused
// bias + activation epilogue), grad-input, and grad-weight (its adjoint: see run_grad_weight). The direct
// path (csrc/cpu/conv2d.cpp: tiled im2col + GEMM) does 9 multiply-adds per output per input channel; this one
// does 36 per 4x4 output tile, 2.25, plus three cheap linear transforms -- so the GEMM work is 4x smaller.
//
//   U[p, c, k] = (G g_kc G^T)[p]     filter transform, once per call (36 x C x K)
//   V[p, t, c] = (B^T d_tc B)[p]     input transform of tile t's 6x6 patch d (zeros outside the image)
//   M[p]       = V[p] @ U[p]         36 GEMMs (tiles x C) . (C x K) per block of tiles (mk_gemm, or BLAS)
//   y_tk       = act(A^T M_tk A + b_k)  output transform, bias and activation in one pass (the epilogue)
//
// The matrices (points 0, +-1, +-2, inf) and a readable prototype are in tests/winograd_ref.py, which the
// tests check this file against.
//
// Two schemes (run_block, run_small; picked by small_batch()). Block: tiles are numbered over the whole
// batch and cut into blocks; a block is one task -- transform its inputs into V (36 x TB x C), run the 36
// GEMMs into M (36 x TB x K), transform M into output tiles, all within L2; U (36 x C x K) is made once per
// call and read by every block. Small batch (few tiles, wide layers, where U does not fit in L2 and the
// block scheme would read it from memory for every few tiles): V is made once for all tiles, and the
// threads split the output channels instead, each chunk making its ~1 MB slice of U and using it while it
// is in cache. Every transform works on 16 channels at a time (one AVX-512 vector of fp32), in small local
// arrays, reading the input and writing the output in their own layout (NCHW or channels_last: no layout
// copies); the filter transform reads w in place for grad-input too (Filt: no flipped copy).
//
// Numerics. Winograd is not the direct sum reordered: the transforms mix each 6x6 patch with coefficients
// up to 8 * 5 * 4, so rounding errors are relative to |A^T|(|G||g||G^T| * |B^T||d||B|)|A| rather than to
// |g| * |d|. The bound (derived in tests/winograd_ref.py: winograd_bound) is
//     |y - exact| <= gamma_{C + 29} * winograd_abs(|x|, |w|) (+ |b|),   gamma_n = n u / (1 - n u)
// and measured on ResNet-like activations (post-BN-ReLU inputs, He-init weights; benchmarks/winograd_error.py)
// the fp32 error is ~20x the direct conv's: 3-7e-6 of max |y| at C = 16..512 (direct and oneDNN: 2-4e-7),
// up to ~60 u elementwise relative to |x| * |w| (direct: 1-4 u), using under 0.4% of the bound. That is
// why "direct" stays selectable (pydl.conv2d_algo). fp64 runs the same code (gradcheck); fp16/bf16 take the
// direct path. The result is deterministic: every output is one fixed sequence of operations (no atomics,
// no split reductions), so torch.use_deterministic_algorithms needs nothing from this file.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "common.h"
#include "conv2d_internal.h"
#include "winograd.h"

// MKL's (or OpenBLAS's) Fortran GEMMs, exported by libtorch_cpu in the usual builds. Weak, so the library
// still loads against a torch without them (at::mm then does the GEMMs). Called directly rather than via
// at::mm: a block makes 36 small GEMMs, and at::mm's per-call cost (tensor views, dispatch: microseconds)
// would rival the GEMMs themselves.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace pydl {
namespace winograd {
namespace {

thread_local int64_t t_algo = kAuto;

// C (m x n) = A (m x k) @ B (k x n), all row-major with leading dimensions; ta / tb: A / B is stored
// transposed (A as k x m, B as n x k, leading dimensions lda, ldb). A row-major C is a column-major
// C^T = B^T A^T, which is how the column-major BLAS is called.
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb,
          T* C, int64_t ldc) {
  const int mi = int(m), ni = int(n), ki = int(k), la = int(lda), lb = int(ldb), lc = int(ldc);
  const T one = 1, zero = 0;
  const char* opb = tb ? "T" : "N";
  const char* opa = ta ? "T" : "N";
  if (std::is_same<T, float>::value && sgemm_ != nullptr) {
    sgemm_(opb, opa, &ni, &mi, &ki, reinterpret_cast<const float*>(&one), reinterpret_cast<const float*>(B), &lb,
           reinterpret_cast<const float*>(A), &la, reinterpret_cast<const float*>(&zero),
           reinterpret_cast<float*>(C), &lc);
    return;
  }
  if (std::is_same<T, double>::value && dgemm_ != nullptr) {
    dgemm_(opb, opa, &ni, &mi, &ki, reinterpret_cast<const double*>(&one), reinterpret_cast<const double*>(B), &lb,
           reinterpret_cast<const double*>(A), &la, reinterpret_cast<const double*>(&zero),
           reinterpret_cast<double*>(C), &lc);
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  const auto st = [](bool t, int64_t ld) { return t ? std::vector<int64_t>{1, ld} : std::vector<int64_t>{ld, 1}; };
  at::mm_out(c, at::from_blob(const_cast<T*>(A), {m, k}, st(ta, lda), opt),
             at::from_blob(const_cast<T*>(B), {k, n}, st(tb, ldb), opt));
}

// Channels per step of the transforms: one AVX-512 vector of fp32. Each transform loads a chunk into a local
// array, so the arithmetic runs on arrays the compiler knows do not alias: plain vector code, no checks.
constexpr int64_t CB = 16;

#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")

// Where the filter's taps lie, and which way the filter transform walks them. Tap t (0..8, row-major r*3+s)
// of output channel k, input channel c is at p[o*so + i*9 + t*st], where the "outer" index o and the "inner"
// index i are (k, c) or (c, k): the inner one is always the one whose taps are contiguous in memory, so that
// 16 of them (the vector) are one 576-byte run, not 16 cache lines far apart. U is then laid out with the
// inner index contiguous:
//   forward, w (K, C, 3, 3):             o = k, i = c, st = 1; U stored transposed, (36, K, C) (tu = true)
//   grad-input, w' = w flipped in space and transposed in channels, w'[k', c', r, s] = w[c', k', 2-r, 2-s]:
//     read in place from w: o = c' (w's dim 0), i = k', tap 8 - t (st = -1); U is (36, C', K') (tu = false).
// No flipped copy for grad-input (it cost 2-13 ms per call at 64..512 channels).
template <typename T>
struct Filt {
  const T* p;
  int64_t so, st;
  bool tu;  // outer index is the output channel: U stored (K x C) per point, the GEMM reads it transposed
};

// Filter transform of outer index o, inner indices [i_begin, i_end): U[p*6+q] = sum G[p][r] g[r][s] G[q][s],
// written at row[(p*6+q)*pstride + (i - i_begin)] (row: where U's row for o starts, in point 0's matrix).
// 16 inner indices at a time, one vector each; each (p, o) row of U is written as one contiguous run.
template <typename T>
void filter_transform(const Filt<T>& f, int64_t o, int64_t i_begin, int64_t i_end, T* row, int64_t pstride) {
  const T q4 = T(1) / 4, s6 = T(1) / 6, t12 = T(1) / 12, t24 = T(1) / 24;
  for (int64_t k0 = i_begin; k0 < i_end; k0 += CB) {  // k: the inner index here
    const int64_t nk = std::min(CB, i_end - k0);
    alignas(64) T g[9][CB];
    const T* src = f.p + o * f.so + k0 * 9;
    if (nk == CB) {
      for (int64_t r = 0; r < 9; ++r)
        for (int64_t k = 0; k < CB; ++k) g[r][k] = src[k * 9 + r * f.st];
    } else {
      for (int64_t r = 0; r < 9; ++r)
        for (int64_t k = 0; k < CB; ++k) g[r][k] = k < nk ? src[k * 9 + r * f.st] : T(0);
    }
    alignas(64) T t[6][3][CB];  // t[p][s] = sum_r G[p][r] g[r][s]
    for (int s = 0; s < 3; ++s)
#pragma omp simd
      for (int64_t k = 0; k < CB; ++k) {
        const T a = g[s][k], b = g[3 + s][k], d = g[6 + s][k];
        t[0][s][k] = a * q4;
        t[1][s][k] = -(a + b + d) * s6;
        t[2][s][k] = -(a - b + d) * s6;
        t[3][s][k] = a * t24 + b * t12 + d * s6;
        t[4][s][k] = a * t24 - b * t12 + d * s6;
        t[5][s][k] = d;
      }
    for (int p = 0; p < 6; ++p) {
      alignas(64) T u[6][CB];
#pragma omp simd
      for (int64_t k = 0; k < CB; ++k) {
        const T a = t[p][0][k], b = t[p][1][k], d = t[p][2][k];
        u[0][k] = a * q4;
        u[1][k] = -(a + b + d) * s6;
        u[2][k] = -(a - b + d) * s6;
        u[3][k] = a * t24 + b * t12 + d * s6;
        u[4][k] = a * t24 - b * t12 + d * s6;
        u[5][k] = d;
      }
      for (int q = 0; q < 6; ++q) {
        T* dst = row + (p * 6 + q) * pstride + (k0 - i_begin);
        if (nk == CB) {
          for (int64_t k = 0; k < CB; ++k) dst[k] = u[q][k];
        } else {
          for (int64_t k = 0; k < nk; ++k) dst[k] = u[q][k];
        }
      }
    }
  }
}

#if defined(__AVX512F__)
// fp32 with AVX-512, the same arithmetic in registers: the taps of 16 inner indices are one gather each
// (from the 576-byte run). The generic loops above compiled to scalar loads and inserts (perf) and took ~45
// cycles per filter whichever way they walked w; this takes ~22: a 512-channel forward of one tile (the
// filter transform and little else), 1 thread, 3.7 -> 1.95 ms. Calls put(pq, u) with the 36 transformed
// points of the 16 filters (masked to nk lanes) -- the caller decides where they go.
// src: the 16 filters' tap 0, si apart (taps f.st apart).
template <typename Put>
inline void filter_transform16(const Filt<float>& f, const float* src, int32_t si, __mmask16 mask, Put&& put) {
  const __m512 q4 = _mm512_set1_ps(1.f / 4), ns6 = _mm512_set1_ps(-1.f / 6), s6 = _mm512_set1_ps(1.f / 6),
               t12 = _mm512_set1_ps(1.f / 12), t24 = _mm512_set1_ps(1.f / 24);
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(si));
  __m512 g[9];
  for (int r = 0; r < 9; ++r) g[r] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, idx, src + r * f.st, 4);
  __m512 t[6][3];
  for (int s = 0; s < 3; ++s) {
    const __m512 a = g[s], b = g[3 + s], d = g[6 + s];
    t[0][s] = a * q4;
    t[1][s] = (a + b + d) * ns6;
    t[2][s] = (a - b + d) * ns6;
    t[3][s] = a * t24 + b * t12 + d * s6;
    t[4][s] = a * t24 - b * t12 + d * s6;
    t[5][s] = d;
  }
  for (int p = 0; p < 6; ++p) {
    const __m512 a = t[p][0], b = t[p][1], d = t[p][2];
    const __m512 u[6] = {a * q4, (a + b + d) * ns6, (a - b + d) * ns6, a * t24 + b * t12 + d * s6,
                         a * t24 - b * t12 + d * s6, d};
    for (int q = 0; q < 6; ++q) put(p * 6 + q, u[q]);
  }
}

template <>
void filter_transform<float>(const Filt<float>& f, int64_t o, int64_t i_begin, int64_t i_end, float* row,
                             int64_t pstride) {
  for (int64_t k0 = i_begin; k0 < i_end; k0 += CB) {
    const int64_t nk = std::min(CB, i_end - k0);
    const __mmask16 mask = nk == CB ? __mmask16(0xFFFF) : __mmask16((1u << nk) - 1);
    float* dst = row + (k0 - i_begin);
    filter_transform16(f, f.p + o * f.so + k0 * 9, 9, mask,
                       [&](int pq, __m512 u) { _mm512_mask_storeu_ps(dst + pq * pstride, mask, u); });
  }
}

// ---- the GEMM micro-kernel (fp32, AVX-512) ----------------------------------------------------------------
// The 36 products M[p] = V[p] (tiles x C) . U[p] (C x K) are small: at 256@14, N=2 a block is 32 tiles, and a
// BLAS call per point (36 per block, each packing its operands and dispatching) spent more time on that than
// on the ~16 columns of work it was given. Here U is made once per call already in the kernel's layout,
// panels of 16 output channels -- U[p] + j*C*16 is channels [16j, 16j + 16) for c = 0..C-1, row c at c*16 --
// and V is the input transform's own row-major (tiles x C), so nothing is packed per product. A micro-tile is
// MR x 16*NV of M, its accumulators in registers for the whole C loop (6 x 64: 24 of the 32 zmm registers;
// per c, 6 broadcasts of V and 4 loads of U feed 24 FMAs).
constexpr int MK_MR = 6, MK_NV = 4;

// Packed U's layout: element (c, k) of one point, the point's matrix holding K rounded up to 16 columns.
inline int64_t packed_at(int64_t C, int64_t c, int64_t k) { return (k / 16) * C * 16 + c * 16 + (k % 16); }

// Filter transform into packed U: input channel c, output channels [k_begin, k_end), written at U's columns
// relative to k_base (a multiple of 16: the slice's first output channel), points us apart. The 16 output
// channels of a vector are one row of a panel: one store per point. Forward (f.tu: w is (K, C, 3, 3)) gathers
// their taps from 16 filters C*9 apart -- walking c in order, each of those 16 runs is read sequentially
// (a scatter into the panels from the 576-byte runs instead was 10x slower: 1 -> 11 ms at 512@7); grad-input
// (w' read in place) has them 9 apart, as filter_transform.
void filter_transform_packed(const Filt<float>& f, int64_t c, int64_t k_begin, int64_t k_end, int64_t C,
                             int64_t k_base, float* U, int64_t us) {
  const float* base = f.tu ? f.p + c * 9 : f.p + c * f.so;
  const int32_t si = int32_t(f.tu ? f.so : 9);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += CB) {
    const int64_t n = std::min(CB, k_end - k0);
    const __mmask16 mask = n == CB ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    float* dst = U + packed_at(C, c, k0 - k_base);
    filter_transform16(f, base + k0 * si, si, mask,
                       [&](int pq, __m512 u) { _mm512_mask_storeu_ps(dst + pq * us, mask, u); });
  }
}

// One micro-tile: Mt (MR x 16*NV, row stride ldm) = A (MR x L, row stride lda) . B (L x 16*NV: NV panels
// bp apart, row l at l*16); the last panel's columns beyond `last` are neither read nor written.
template <int MR, int NV>
void mk_tile(int64_t L, const float* A, int64_t lda, const float* B, int64_t bp, float* Mt, int64_t ldm,
             __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t l = 0; l < L; ++l) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, B + v * bp + l * 16) : _mm512_loadu_ps(B + v * bp + l * 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * lda + l]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (v == NV - 1)
        _mm512_mask_storeu_ps(Mt + i * ldm + v * 16, last, acc[i][v]);
      else
        _mm512_storeu_ps(Mt + i * ldm + v * 16, acc[i][v]);
    }
}

using MkTile = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, __mmask16);

template <int MR>
constexpr MkTile mk_row(int nv) {
  return nv == 1 ? &mk_tile<MR, 1> : nv == 2 ? &mk_tile<MR, 2> : nv == 3 ? &mk_tile<MR, 3> : &mk_tile<MR, 4>;
}

// M (m x n, row stride ldm) = A (m x L, row stride lda) . packed B (L x n). Column blocks of 64 outside: a
// block's panels (L x 64) are read by every row block while in L1/L2. Each element of M is one FMA chain
// over l = 0..L-1 in order, whatever m and n: the result does not depend on the blocking (deterministic,
// and the same for any thread count).
void mk_gemm(int64_t m, int64_t n, int64_t L, const float* A, int64_t lda, const float* B, float* M, int64_t ldm) {
  static const MkTile table[MK_MR][MK_NV] = {
      {mk_row<1>(1), mk_row<1>(2), mk_row<1>(3), mk_row<1>(4)}, {mk_row<2>(1), mk_row<2>(2), mk_row<2>(3), mk_row<2>(4)},
      {mk_row<3>(1), mk_row<3>(2), mk_row<3>(3), mk_row<3>(4)}, {mk_row<4>(1), mk_row<4>(2), mk_row<4>(3), mk_row<4>(4)},
      {mk_row<5>(1), mk_row<5>(2), mk_row<5>(3), mk_row<5>(4)}, {mk_row<6>(1), mk_row<6>(2), mk_row<6>(3), mk_row<6>(4)}};
  const int64_t bp = L * 16;
  for (int64_t j0 = 0; j0 < n; j0 += 16 * MK_NV) {
    const int64_t nn = std::min<int64_t>(16 * MK_NV, n - j0), nv = (nn + 15) / 16, rem = nn % 16;
    const __mmask16 last = rem == 0 ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
    const float* Bj = B + (j0 / 16) * bp;
    for (int64_t i0 = 0; i0 < m; i0 += MK_MR) {
      const int64_t mr = std::min<int64_t>(MK_MR, m - i0);
      table[mr - 1][nv - 1](L, A + i0 * lda, lda, Bj, bp, M + i0 * ldm + j0, ldm, last);
    }
  }
}
#endif

// One image of an activation tensor: element (c, h, w) at p + c*sc + h*sh + w*sw. NCHW (sc = H*W) and
// channels_last (sc = 1) are both read in place.
template <typename T>
struct Img {
  const T* p;
  int64_t H, W, C, sc, sh, sw;
};

// The R x R patch of channels [c0, c0 + nc) whose corner is (h0, w0), as d[a][b][c], zeros outside the image and
// beyond nc (the transforms then run on full 16-lane vectors). Shared by the input transform (6 x 6, the corner
// may lie in the padding) and grad-weight's dz transform (4 x 4). Channels_last reads 16 contiguous values; NCHW
// reads them H*W apart -- still cheaper than a channels_last copy, as the patch's rows stay in L1 for the
// neighbouring tiles.
template <int R, typename T>
void load_patch(const Img<T>& x, int64_t h0, int64_t w0, int64_t c0, int64_t nc, T (&d)[R][R][CB]) {
  for (int64_t a = 0; a < R; ++a)
    for (int64_t b = 0; b < R; ++b) {
      const int64_t hi = h0 + a, wi = w0 + b;
      T* dst = d[a][b];
      if (hi < 0 || hi >= x.H || wi < 0 || wi >= x.W) {
        for (int64_t c = 0; c < CB; ++c) dst[c] = T(0);
      } else {
        const T* src = x.p + c0 * x.sc + hi * x.sh + wi * x.sw;
        if (nc == CB && x.sc == 1) {
          for (int64_t c = 0; c < CB; ++c) dst[c] = src[c];
        } else if (nc == CB) {
          for (int64_t c = 0; c < CB; ++c) dst[c] = src[c * x.sc];
        } else {
          for (int64_t c = 0; c < CB; ++c) dst[c] = c < nc ? src[c * x.sc] : T(0);
        }
      }
    }
}

// Input transform of one tile, the patch's corner at (h0, w0) (may lie in the padding). Writes
// V[(p*6+q)*pstride + c] for c < C.
template <typename T>
void input_transform(const Img<T>& x, int64_t h0, int64_t w0, T* V, int64_t pstride) {
  for (int64_t c0 = 0; c0 < x.C; c0 += CB) {
    const int64_t nc = std::min(CB, x.C - c0);
    alignas(64) T d[6][6][CB];
    load_patch<6>(x, h0, w0, c0, nc, d);
    // t[p][b] = sum_a BT[p][a] d[a][b], then V[p][q] = sum_b BT[q][b] t[p][b]. The rows of B^T, factored:
    //   4 d0 - 5 d2 + d4 | (d3 + d4) - 4 (d1 + d2) | (d4 - d3) + 4 (d1 - d2)
    //   (d4 - d2) + 2 (d3 - d1) | (d4 - d2) - 2 (d3 - d1) | 4 d1 - 5 d3 + d5
    alignas(64) T t[6][6][CB];
    for (int b = 0; b < 6; ++b)
#pragma omp simd
      for (int64_t c = 0; c < CB; ++c) {
        const T a0 = d[0][b][c], a1 = d[1][b][c], a2 = d[2][b][c], a3 = d[3][b][c], a4 = d[4][b][c], a5 = d[5][b][c];
        t[0][b][c] = T(4) * a0 - T(5) * a2 + a4;
        t[1][b][c] = (a3 + a4) - T(4) * (a1 + a2);
        t[2][b][c] = (a4 - a3) + T(4) * (a1 - a2);
        t[3][b][c] = (a4 - a2) + T(2) * (a3 - a1);
        t[4][b][c] = (a4 - a2) - T(2) * (a3 - a1);
        t[5][b][c] = T(4) * a1 - T(5) * a3 + a5;
      }
    for (int p = 0; p < 6; ++p) {
      alignas(64) T v[6][CB];
#pragma omp simd
      for (int64_t c = 0; c < CB; ++c) {
        const T a0 = t[p][0][c], a1 = t[p][1][c], a2 = t[p][2][c], a3 = t[p][3][c], a4 = t[p][4][c], a5 = t[p][5][c];
        v[0][c] = T(4) * a0 - T(5) * a2 + a4;
        v[1][c] = (a3 + a4) - T(4) * (a1 + a2);
        v[2][c] = (a4 - a3) + T(4) * (a1 - a2);
        v[3][c] = (a4 - a2) + T(2) * (a3 - a1);
        v[4][c] = (a4 - a2) - T(2) * (a3 - a1);
        v[5][c] = T(4) * a1 - T(5) * a3 + a5;
      }
      for (int q = 0; q < 6; ++q) {
        T* dst = V + (p * 6 + q) * pstride + c0;
        if (nc == CB) {
          for (int64_t c = 0; c < CB; ++c) dst[c] = v[q][c];
        } else {
          for (int64_t c = 0; c < nc; ++c) dst[c] = v[q][c];
        }
      }
    }
  }
}

// Where one image's output goes: element (k, h, w) at y + k*sk + h*sh + w*sw (NCHW: sk = Ho*Wo, sw = 1;
// channels_last: sk = 1).
template <typename T>
struct Out {
  T* y;
  T* z;  // pre-activation, or nullptr
  int64_t sk, sh, sw;
};

// NCHW output of one tile row, 16 channels: v[j][k] (4 pixels x 16 channels) written as 16 runs of 4 pixels,
// one per channel, sk apart. fp32 on AVX-512: a 4x4 transpose within each 128-bit lane of the 4 vectors,
// then one 16-byte store per channel (the scalar loop did 64 stores, and 64 more for z). Returns false
// where it did nothing (the caller's loop writes the run).
template <typename T>
bool store_runs(const T (&yy)[4][CB], const T (&zz)[4][CB], const Out<T>& o, int64_t k0, int64_t row) {
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    if (o.sw != 1) return false;
    const auto put = [&](const float (&v)[4][CB], float* dst) {
      const __m512 t0 = _mm512_unpacklo_ps(_mm512_load_ps(v[0]), _mm512_load_ps(v[1]));
      const __m512 t1 = _mm512_unpackhi_ps(_mm512_load_ps(v[0]), _mm512_load_ps(v[1]));
      const __m512 t2 = _mm512_unpacklo_ps(_mm512_load_ps(v[2]), _mm512_load_ps(v[3]));
      const __m512 t3 = _mm512_unpackhi_ps(_mm512_load_ps(v[2]), _mm512_load_ps(v[3]));
      const auto lo = [](__m512 a, __m512 b) {
        return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
      };
      const auto hi = [](__m512 a, __m512 b) {
        return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
      };
      const __m512 r[4] = {lo(t0, t2), hi(t0, t2), lo(t1, t3), hi(t1, t3)};  // r[c]: channels 4L + c, lane L
      for (int c = 0; c < 4; ++c) {
        _mm_storeu_ps(dst + c * o.sk, _mm512_castps512_ps128(r[c]));
        _mm_storeu_ps(dst + (4 + c) * o.sk, _mm512_extractf32x4_ps(r[c], 1));
        _mm_storeu_ps(dst + (8 + c) * o.sk, _mm512_extractf32x4_ps(r[c], 2));
        _mm_storeu_ps(dst + (12 + c) * o.sk, _mm512_extractf32x4_ps(r[c], 3));
      }
    };
    put(yy, o.y + k0 * o.sk + row);
    if (o.z != nullptr) put(zz, o.z + k0 * o.sk + row);
    return true;
  }
#endif
  (void)yy, (void)zz, (void)o, (void)k0, (void)row;
  return false;
}

// Output transform of one tile, with the epilogue: M[(p*6+q)*mstride + k] for k < K -> the tile's 4x4 outputs
// (rows/columns beyond Ho, Wo are dropped: the last tiles overhang the image). A^T's rows:
//   m0 + m1 + m2 + m3 + m4 | (m1 - m2) + 2 (m3 - m4) | (m1 + m2) + 4 (m3 + m4) | (m1 - m2) + 8 (m3 - m4) + m5
template <int KIND, typename T>
void output_transform(const T* M, int64_t mstride, int64_t K, const T* bias, const Act<T>& act_in, int64_t h0,
                      int64_t w0, int64_t Ho, int64_t Wo, const Out<T>& o) {
  const Act<T> act{KIND, act_in.leak, act_in.sub, act_in.maxv};  // KIND known here: forward() folds its branches
  const int64_t ni = std::min<int64_t>(4, Ho - h0), nj = std::min<int64_t>(4, Wo - w0);
  for (int64_t k0 = 0; k0 < K; k0 += CB) {
    const int64_t nk = std::min(CB, K - k0);
    alignas(64) T m[36][CB];
    for (int64_t p = 0; p < 36; ++p) {
      const T* src = M + p * mstride + k0;
      if (nk == CB) {
        for (int64_t k = 0; k < CB; ++k) m[p][k] = src[k];
      } else {
        for (int64_t k = 0; k < CB; ++k) m[p][k] = k < nk ? src[k] : T(0);
      }
    }
    alignas(64) T bv[CB];
    for (int64_t k = 0; k < CB; ++k) bv[k] = (bias != nullptr && k < nk) ? bias[k0 + k] : T(0);
    alignas(64) T s[4][6][CB];  // s[i][q] = sum_p AT[i][p] m[p][q]
    for (int q = 0; q < 6; ++q)
#pragma omp simd
      for (int64_t k = 0; k < CB; ++k) {
        const T a0 = m[q][k], a1 = m[6 + q][k], a2 = m[12 + q][k], a3 = m[18 + q][k], a4 = m[24 + q][k],
                a5 = m[30 + q][k];
        s[0][q][k] = a0 + a1 + a2 + a3 + a4;
        s[1][q][k] = (a1 - a2) + T(2) * (a3 - a4);
        s[2][q][k] = (a1 + a2) + T(4) * (a3 + a4);
        s[3][q][k] = (a1 - a2) + T(8) * (a3 - a4) + a5;
      }
    for (int64_t i = 0; i < ni; ++i) {
      alignas(64) T zz[4][CB], yy[4][CB];
#pragma omp simd
      for (int64_t k = 0; k < CB; ++k) {
        const T a0 = s[i][0][k], a1 = s[i][1][k], a2 = s[i][2][k], a3 = s[i][3][k], a4 = s[i][4][k],
                a5 = s[i][5][k];
        zz[0][k] = a0 + a1 + a2 + a3 + a4 + bv[k];
        zz[1][k] = (a1 - a2) + T(2) * (a3 - a4) + bv[k];
        zz[2][k] = (a1 + a2) + T(4) * (a3 + a4) + bv[k];
        zz[3][k] = (a1 - a2) + T(8) * (a3 - a4) + a5 + bv[k];
        for (int j = 0; j < 4; ++j) yy[j][k] = act.forward(zz[j][k]);
      }
      const int64_t row = (h0 + i) * o.sh + w0 * o.sw;
      if (o.sk == 1) {  // channels_last: the chunk's channels are contiguous
        for (int64_t j = 0; j < nj; ++j) {
          const int64_t off = k0 + row + j * o.sw;
          for (int64_t k = 0; k < nk; ++k) o.y[off + k] = yy[j][k];
          if (o.z != nullptr)
            for (int64_t k = 0; k < nk; ++k) o.z[off + k] = zz[j][k];
        }
      } else if (nj == 4 && nk == CB && store_runs(yy, zz, o, k0, row)) {  // NCHW, a whole tile row: done
      } else {  // NCHW: per channel, a run of nj pixels of one row
        for (int64_t k = 0; k < nk; ++k) {
          T* y = o.y + (k0 + k) * o.sk + row;
          for (int64_t j = 0; j < nj; ++j) y[j] = yy[j][k];
          if (o.z != nullptr) {
            T* z = o.z + (k0 + k) * o.sk + row;
            for (int64_t j = 0; j < nj; ++j) z[j] = zz[j][k];
          }
        }
      }
    }
  }
}

#pragma GCC pop_options

// An integer experiment knob, read on every call (so a benchmark or test can switch it between calls).
int64_t env_int(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::atoll(v) : dflt;
}

// An experiment knob with two forced choices: unset, "auto", a or b (read per call, so a test can flip it);
// anything else is an error naming the knob.
std::string env_choice(const char* name, const char* a, const char* b) {
  const char* s = std::getenv(name);
  const std::string v = s != nullptr ? s : "";
  PYDL_CHECK_VALUE(v.empty() || v == "auto" || v == a || v == b, name, " must be ", a, ", ", b, " or auto, got '", v,
                   "'");
  return v;
}

// The stride between the 36 matrices of V, U or M. The transforms touch all 36 at one offset (36 loads or
// stores, one per point), so a stride that is a multiple of 4 KiB puts them all in one L1 set (12 ways:
// they evict each other on every tile), and any even number of cache lines halves the sets used. Rounded
// up to whole cache lines, then to an odd number of them: 36 rows in 36 different sets.
int64_t pad_stride(int64_t n, int64_t elem) {
  const int64_t line = 64 / elem;
  n = (n + line - 1) / line * line;
  if ((n / line) % 2 == 0) n += line;
  return n;
}

// Whether the 36 GEMMs run in this file's micro-kernel (mk_gemm; fp32 on AVX-512 builds) or through BLAS
// (gemm()). PYDL_WINOGRAD_GEMM=kernel|blas forces one (A/B runs, tests); auto (the default): the kernel for
// the forward in the block scheme, and in the small one up to 128 input channels (256 from 32 tiles on); for
// grad-input in the block scheme up to 256 channels. Measured (1 thread,
// thread CPU time, GEMM phase in GFLOP/s of 2 * 36 * tiles * C * K flops, 3 runs on a shared machine;
// benchmarks/winograd_phases.py), BLAS -> kernel:
//   block: 64@56 N=2 forward 121 -> 199 (the core's fp32 FMA peak is ~200), grad-input 181 -> 198;
//          512@7 N=32 forward 135-169 -> 149-185, grad-input 155-196 -> 147-187 (and its packed filter
//          transform, reading w' across rows 18 KB apart, 14.8 -> 17.4 ms)
//   small (32..98 tiles, chunks of 16 output channels): forward 128@28 N=2 154-166 -> 173-176,
//          256@14 N=2 105-112 -> 118-152, but 512@7 N=2 105-108 -> 86-93; grad-input 127-190 -> 120-176.
//   small, whole forward: 64@7 N=2 (8 tiles) 118 -> 98 us, 128@14 N=2 650 -> 565, but 256@7 N=2 (8 tiles:
//          6 + 2 rows) 813 -> 891-951.
// BLAS's forward reads U transposed there (U's rows are the output channels: the filter's layout); its
// grad-input reads U as is, and with 16 columns the 6 x 16 micro-tile needs 7 loads per 6 FMAs (load-bound).
// Wider chunks (32 columns) put U's slice out of L2 and slowed the filter transform more (307 -> 554 us).
template <typename T>
bool use_kernel(bool small, bool forward, int64_t C, int64_t tiles) {
  const std::string v = env_choice("PYDL_WINOGRAD_GEMM", "kernel", "blas");
#if defined(__AVX512F__)
  if (!std::is_same<T, float>::value || v == "blas") return false;
  const bool small_ok = C <= 128 || (C <= 256 && tiles >= 32);
  return v == "kernel" || sgemm_ == nullptr || (forward ? !small || small_ok : !small && C <= 256);
#else
  (void)small, (void)forward, (void)C, (void)tiles;
  return false;
#endif
}

// Phase profile (PYDL_WINOGRAD_PROFILE=1, read once): each call prints one line to stderr with the thread
// CPU time its workers spent per phase, summed over the threads (benchmarks/winograd_phases.py reads it).
// Off, it costs one predictable branch per phase per block.
struct Prof {
  static bool on() {
    static const bool v = env_int("PYDL_WINOGRAD_PROFILE", 0) != 0;
    return v;
  }
  static int64_t now() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  }
  std::atomic<int64_t> ns[4] = {};  // input transform, filter transform, GEMMs, output transform (+ epilogue)
  bool active = on();
  int64_t mark() const { return active ? now() : 0; }
  void add(int phase, int64_t& t) {  // the time since t to phase; t restarts
    if (!active) return;
    const int64_t n = now();
    ns[phase] += n - t;
    t = n;
  }
  void print(const char* what, const char* scheme, bool mk, int64_t tiles, int64_t C, int64_t K) const {
    if (!active) return;
    std::fprintf(stderr, "winograd-profile %s %s %s tiles=%lld C=%lld K=%lld us: %.1f %.1f %.1f %.1f\n", what, scheme,
                 mk ? "kernel" : "blas", (long long)tiles, (long long)C, (long long)K, ns[0] / 1e3, ns[1] / 1e3,
                 ns[2] / 1e3, ns[3] / 1e3);
  }
};

// Tiles per block. Two pulls: V (36 x TB x C) and M (36 x TB x K) should stay in L2 (~1 MB, room left for
// the GEMM's packed panels), and every block reads all of U (36 x C x K) -- per tile that is C*K / TB
// elements against the C + K of its V and M. So TB >= C*K / (C + K) (C/2 for C = K), which wins over L2
// for wide layers: at 512 channels U is 37 MB, and re-reading it for every 16 tiles made the GEMMs
// memory-bound, while V and M stream (each element feeds C or K multiply-adds). At least 16 tiles (a thinner
// GEMM runs far below peak), at most 256. Then made even across the threads: a last, short block would
// leave a core idle.
int64_t pick_block(int64_t tiles, int64_t C, int64_t K, int64_t elem) {
  const int64_t budget = env_int("PYDL_WINOGRAD_KB", 1024) * 1024;  // for experiments: the V + M budget per block
  int64_t tb = std::max(budget / (36 * elem * (C + K)), std::min<int64_t>(256, C * K / (C + K)));
  tb = std::max<int64_t>(16, tb);
  tb = std::min(tb, tiles);
  const int64_t threads = at::get_num_threads();
  int64_t blocks = (tiles + tb - 1) / tb;
  if (blocks < threads * 4) blocks = ((blocks + threads - 1) / threads) * threads;
  return std::max<int64_t>(1, (tiles + blocks - 1) / blocks);
}

// Which scheme runs (see run()): PYDL_WINOGRAD_SCHEME=block|small|auto for experiments and tests, else the
// small-batch scheme when U is over 1 MiB (more than a core's share of L2 next to the GEMM's panels) and
// there are fewer than 128 tiles (under ~2 blocks per thread: the block scheme would read all of U from
// memory for every few tiles), or at any U below 32 tiles (1 thread, thread CPU time, Winograd over direct:
// 64@7 at N=1, 2 (4, 8 tiles) 0.85 / 0.85 in blocks, 1.03 / 1.15 in chunks; 64@14 N=2 (32 tiles) 1.25 / 1.24).
bool small_batch(int64_t tiles, int64_t C, int64_t K, int64_t elem) {
  const std::string scheme = env_choice("PYDL_WINOGRAD_SCHEME", "block", "small");
  if (scheme == "block") return false;
  if (scheme == "small") return true;
  return tiles < 32 || (36 * C * K * elem > (int64_t(1) << 20) && tiles < 128);
}

// The convolution's geometry: x (N, C, H, W) in NCHW or channels_last, output (N, K, Ho, Wo) in NCHW or
// channels_last (out_cl); tiles numbered over the whole batch (n, tile row, tile column).
template <typename T>
struct Geom {
  const T* xp;
  bool x_cl, out_cl;
  int64_t N, C, H, W, K, ph, pw, Ho, Wo, tw, per_image, tiles;
  Img<T> image(int64_t t) const {
    const int64_t n = t / per_image;
    return {xp + n * C * H * W, H, W, C, x_cl ? 1 : H * W, x_cl ? W * C : W, x_cl ? C : 1};
  }
  int64_t row0(int64_t t) const { return ((t % per_image) / tw) * 4; }  // the tile's first output row
  int64_t col0(int64_t t) const { return ((t % per_image) % tw) * 4; }
  // Output of tile t's image, from output channel k0 on.
  Out<T> out(T* y, T* z, int64_t t, int64_t k0) const {
    const int64_t sk = out_cl ? 1 : Ho * Wo, sh = out_cl ? Wo * K : Wo, sw = out_cl ? K : 1;
    const int64_t off = (t / per_image) * K * Ho * Wo + k0 * sk;
    return {y + off, z != nullptr ? z + off : nullptr, sk, sh, sw};
  }
};

// n elements of v, from a cache-line boundary (std::vector's own alignment is malloc's 16 bytes): the
// transforms write whole 64-byte vectors at 64-byte strides, and pad_stride's sets assume whole lines.
// (Unaligned, a 512@7 forward ran 0.89x or 1.15x torch from one process to the next.)
template <typename T>
T* aligned(std::vector<T>& v, int64_t n) {
  const int64_t pad = 64 / sizeof(T);
  if (int64_t(v.size()) < n + pad) v.resize(n + pad);
  const auto p = reinterpret_cast<std::uintptr_t>(v.data());
  return reinterpret_cast<T*>((p + 63) & ~std::uintptr_t(63));
}

// A buffer of n elements for one call, shared by its workers. Up to 4 Mi elements (16 MB in fp32) it is the
// calling thread's (keep), kept across calls: a fresh buffer of a few MB comes from mmap and pays its page
// faults on every call (that was ~7% of a 64@56 forward+backward). Larger ones are allocated per call (big),
// so that a rare wide layer does not pin tens of MB per thread.
template <typename T>
T* scratch(std::vector<T>& keep, at::Tensor& big, int64_t n) {
  if (n <= (int64_t(1) << 22)) {
    return aligned(keep, n);
  }
  big = at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return big.data_ptr<T>();
}

// Block scheme: tiles cut into blocks of TB; a block is one task -- transform its inputs into V
// (36 x TB x C), run the 36 GEMMs into M (36 x TB x K), transform M into output tiles. V and M together
// stay in L2 (pick_block), so each block's data goes from the input to the output without a round trip to
// memory; U (36 x C x K, made once per call) is shared, read by every block.
// U for output channels [k0, k0 + nk) (all of them in the block scheme, a chunk's slice in the small one),
// and the GEMM M (m x n, ldm) = V (m x L, row stride L) . U of one point, in the layout of the GEMM that
// runs: packed panels for the micro-kernel, or U's plain rows for BLAS (f's outer index o at row o: the
// small scheme's f.tu slice is nk rows of C, its other one C rows of nk; the GEMM reads them transposed
// when f.tu). Input channels [c0, c1) only, for a share of the work across threads.
template <typename T>
void make_u(bool mk, const Filt<T>& f, int64_t c0, int64_t c1, int64_t C, int64_t k0, int64_t nk, T* U, int64_t us) {
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    if (mk) {  // panel by panel, c inner: each point's panel is written in order (36 streams), and w is read
               // as 16 sequential runs. (c outer wrote 36 x K/16 lines 32 KB apart per c: TLB misses, the
               // 512@7 N=32 forward's filter transform 17 -> 21 ms.)
      for (int64_t kk = k0; kk < k0 + nk; kk += CB)
        for (int64_t c = c0; c < c1; ++c) filter_transform_packed(f, c, kk, std::min(kk + CB, k0 + nk), C, k0, U, us);
      return;
    }
  }
#endif
  (void)mk;
  if (f.tu) {
    for (int64_t k = 0; k < nk; ++k) filter_transform(f, k0 + k, c0, c1, U + k * C + c0, us);
  } else {
    for (int64_t c = c0; c < c1; ++c) filter_transform(f, c, k0, k0 + nk, U + c * nk, us);
  }
}

template <typename T>
void point_gemm(bool mk, int64_t m, int64_t n, int64_t L, const T* V, const T* U, int64_t ldu, bool tu, T* M,
                int64_t ldm) {
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    if (mk) return mk_gemm(m, n, L, V, L, U, M, ldm);
  }
#endif
  (void)mk;
  gemm<T>(m, n, L, V, L, false, U, ldu, tu, M, ldm);
}

// Block scheme: tiles cut into blocks of TB; a block is one task -- transform its inputs into V
// (36 x TB x C), run the 36 GEMMs into M (36 x TB x K), transform M into output tiles. V and M together
// stay in L2 (pick_block), so each block's data goes from the input to the output without a round trip to
// memory; U (36 x C x K, made once per call) is shared, read by every block.
template <int KIND, typename T>
void run_block(const Geom<T>& g, const Filt<T>& f, const T* bias, const Act<T>& act, T* y, T* z, Prof& prof) {
  const int64_t C = g.C, K = g.K, elem = sizeof(T);
  const bool mk = use_kernel<T>(false, f.tu, C, g.tiles);
  const int64_t us = pad_stride(C * ((K + 15) / 16 * 16), elem);
  at::Tensor U = at::empty({36 * us}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* Up = U.data_ptr<T>();
  const int64_t inner = f.tu ? C : K;
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    int64_t t = prof.mark();
    make_u(mk, f, c0, c1, C, 0, K, Up, us);
    prof.add(1, t);
  });
  const int64_t TB = pick_block(g.tiles, C, K, elem), blocks = (g.tiles + TB - 1) / TB;
  const int64_t vs = pad_stride(TB * C, elem), ms = pad_stride(TB * K, elem);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    thread_local std::vector<T> V, M;  // reused across calls: no allocation (nor zero fill) per block
    T* Vp = aligned(V, 36 * vs);
    T* Mp = aligned(M, 36 * ms);
    int64_t tm = prof.mark();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t t0 = blk * TB, nt = std::min(TB, g.tiles - t0);
      for (int64_t t = 0; t < nt; ++t)
        input_transform(g.image(t0 + t), g.row0(t0 + t) - g.ph, g.col0(t0 + t) - g.pw, Vp + t * C, vs);
      prof.add(0, tm);
      for (int64_t p = 0; p < 36; ++p) point_gemm<T>(mk, nt, K, C, Vp + p * vs, Up + p * us, inner, f.tu, Mp + p * ms, K);
      prof.add(2, tm);
      for (int64_t t = 0; t < nt; ++t)
        output_transform<KIND>(Mp + t * K, ms, K, bias, act, g.row0(t0 + t), g.col0(t0 + t), g.Ho, g.Wo,
                               g.out(y, z, t0 + t, 0));
      prof.add(3, tm);
    }
  });
  prof.print(f.tu ? "forward" : "grad-input", "block", mk, g.tiles, C, K);
}

// Small-batch scheme (few tiles, wide layers: N=2 at 14x14 with 256 channels is 32 tiles against a 9.4 MB U).
// The block scheme would read all of U from memory for every block of a few tiles, and U is then most of
// the traffic. Here the input is transformed once, for all tiles (V: 36 x tiles x C, shared), and the
// threads split the output channels instead: a task is a chunk of KB output channels whose U slice
// (36 x C x KB, ~1 MB: PYDL_WINOGRAD_UKB) it transforms itself, then runs the 36 GEMMs (tiles x C) . (C x KB)
// over all tiles and the output transform + epilogue of those channels. Each slice of U is made and used
// while in cache, and the filter transform is split across the threads with the rest.
template <int KIND, typename T>
void run_small(const Geom<T>& g, const Filt<T>& f, const T* bias, const Act<T>& act, T* y, T* z, Prof& prof) {
  const int64_t C = g.C, K = g.K, tiles = g.tiles, elem = sizeof(T);
  const bool mk = use_kernel<T>(true, f.tu, C, tiles);
  const int64_t vs = pad_stride(tiles * C, elem);
  thread_local std::vector<T> Vkeep;
  at::Tensor Vbig;
  T* Vp = scratch(Vkeep, Vbig, 36 * vs);
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    int64_t tm = prof.mark();
    for (int64_t t = t0; t < t1; ++t) input_transform(g.image(t), g.row0(t) - g.ph, g.col0(t) - g.pw, Vp + t * C, vs);
    prof.add(0, tm);
  });
  // KB: a multiple of the 16-channel vector, U's slice within the budget, and a whole number of chunks per
  // thread (then evened out, so that the last chunk is not a sliver).
  const int64_t budget = env_int("PYDL_WINOGRAD_UKB", 1024) * 1024, threads = at::get_num_threads();
  int64_t kb = std::max<int64_t>(CB, budget / (36 * C * elem) / CB * CB);
  int64_t chunks = (K + kb - 1) / kb;
  chunks = (chunks + threads - 1) / threads * threads;
  kb = std::max<int64_t>(1, ((K + chunks - 1) / chunks + CB - 1) / CB * CB);
  chunks = (K + kb - 1) / kb;
  at::parallel_for(0, chunks, 1, [&](int64_t j0, int64_t j1) {
    thread_local std::vector<T> Uc, Mc;
    const int64_t us = pad_stride(C * kb, elem), ms = pad_stride(tiles * kb, elem);
    T* Up = aligned(Uc, 36 * us);
    T* Mp = aligned(Mc, 36 * ms);
    int64_t tm = prof.mark();
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k0 = j * kb, nk = std::min(kb, K - k0);  // k0: a multiple of 16 (kb is)
      make_u(mk, f, 0, C, C, k0, nk, Up, us);
      prof.add(1, tm);
      for (int64_t p = 0; p < 36; ++p)
        point_gemm<T>(mk, tiles, nk, C, Vp + p * vs, Up + p * us, f.tu ? C : nk, f.tu, Mp + p * ms, nk);
      prof.add(2, tm);
      for (int64_t t = 0; t < tiles; ++t)
        output_transform<KIND>(Mp + t * nk, ms, nk, bias != nullptr ? bias + k0 : nullptr, act, g.row0(t),
                               g.col0(t), g.Ho, g.Wo, g.out(y, z, t, k0));
      prof.add(3, tm);
    }
  });
  prof.print(f.tu ? "forward" : "grad-input", "small", mk, tiles, C, K);
}

// The convolution itself: x (N, C, H, W) any layout, the filter f (K x C taps), bias nullptr or K values;
// writes y, z (z may be nullptr) of shape (N, K, Ho, Wo) in NCHW or channels_last.
template <typename T>
void run(const at::Tensor& x_in, const Filt<T>& f, int64_t K, const T* bias, int64_t ph, int64_t pw,
         const Act<double>& act_d, bool out_cl, T* y, T* z) {
  const bool x_cl = !x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = x_in.contiguous(x_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H + 2 * ph - 2, Wo = W + 2 * pw - 2;
  const int64_t th = (Ho + 3) / 4, tw = (Wo + 3) / 4;
  const Geom<T> g{x.data_ptr<T>(), x_cl, out_cl, N, C, H, W, K, ph, pw, Ho, Wo, tw, th * tw, N * th * tw};
  const Act<T> act{act_d.kind, T(act_d.leak), T(act_d.sub), T(act_d.maxv)};
  const bool small = small_batch(g.tiles, C, K, sizeof(T));
  conv_cpu::with_act(act.kind, [&](auto kind_c) {  // one template per activation, as the direct path
    constexpr int KIND = decltype(kind_c)::value;
    Prof prof;
    if (small)
      run_small<KIND>(g, f, bias, act, y, z, prof);
    else
      run_block<KIND>(g, f, bias, act, y, z, prof);
  });
}

// ---- grad-weight ----------------------------------------------------------------------------------------
// The forward is y_t = A^T [sum_c U_kc (.) V_tc] A per tile t, linear in U = G g G^T; its adjoint gives
//   dU[p, k, c] = sum_t D[p, t, k] V[p, t, c],   D_tk = A dz_tk A^T (6x6, from the tile's 4x4 of dz),
//   gw_kc = G^T dU_kc G                          (6x6 -> 3x3)
// 36 GEMMs (K x tiles) . (tiles x C) -- 36 multiply-adds per tile and (c, k) against the direct path's
// 9 * 16 = 144. Both transforms of the inputs are made once, for all tiles (V as in the forward); the
// threads split the output channels k into chunks whose dU slice (~1 MB) is reduced over all tiles and
// transformed back into gw while in cache. Each gw element is one fixed sequence of operations (the sum over
// tiles is inside one GEMM call): deterministic. Its error bound is gamma_{tiles+31} times the same
// computation on absolute values (tests/test_conv2d_winograd.py: grad_weight_bound); measured on ResNet-like
// data (benchmarks/winograd_error.py, N=2 stages) 2-6e-6 of max |gw|, against 2.5e-7 direct and
// 2.5e-7..1.1e-6 oneDNN: the forward's order of magnitude.

// D[(p*6+q)*pstride + k] for the tile whose output corner is (h0, w0): dz (K channels, Ho x Wo) read in its
// own layout, zeros beyond the image. Rows of A (= columns of A^T):
//   d0 | d0 + d1 + d2 + d3 | d0 - d1 + d2 - d3 | d0 + 2 d1 + 4 d2 + 8 d3 | d0 - 2 d1 + 4 d2 - 8 d3 | d3
template <typename T>
void dz_transform(const Img<T>& g, int64_t h0, int64_t w0, T* D, int64_t pstride) {
  for (int64_t k0 = 0; k0 < g.C; k0 += CB) {
    const int64_t nk = std::min(CB, g.C - k0);
    alignas(64) T d[4][4][CB];
    load_patch<4>(g, h0, w0, k0, nk, d);
    alignas(64) T t[6][4][CB];  // t[p][b] = sum_a A[p][a] d[a][b]
    for (int b = 0; b < 4; ++b)
#pragma omp simd
      for (int64_t k = 0; k < CB; ++k) {
        const T a0 = d[0][b][k], a1 = d[1][b][k], a2 = d[2][b][k], a3 = d[3][b][k];
        t[0][b][k] = a0;
        t[1][b][k] = (a0 + a2) + (a1 + a3);
        t[2][b][k] = (a0 + a2) - (a1 + a3);
        t[3][b][k] = (a0 + T(4) * a2) + T(2) * (a1 + T(4) * a3);
        t[4][b][k] = (a0 + T(4) * a2) - T(2) * (a1 + T(4) * a3);
        t[5][b][k] = a3;
      }
    for (int p = 0; p < 6; ++p) {
      alignas(64) T v[6][CB];
#pragma omp simd
      for (int64_t k = 0; k < CB; ++k) {
        const T a0 = t[p][0][k], a1 = t[p][1][k], a2 = t[p][2][k], a3 = t[p][3][k];
        v[0][k] = a0;
        v[1][k] = (a0 + a2) + (a1 + a3);
        v[2][k] = (a0 + a2) - (a1 + a3);
        v[3][k] = (a0 + T(4) * a2) + T(2) * (a1 + T(4) * a3);
        v[4][k] = (a0 + T(4) * a2) - T(2) * (a1 + T(4) * a3);
        v[5][k] = a3;
      }
      for (int q = 0; q < 6; ++q) {
        T* dst = D + (p * 6 + q) * pstride + k0;
        for (int64_t k = 0; k < nk; ++k) dst[k] = v[q][k];
      }
    }
  }
}

// gw[k, c, r, s] = sum_{p,q} G[p][r] dU[p*6+q][k][c] G[q][s] for one k and all c, 16 c at a time; dU's row
// for k starts at row (point 0's matrix), points pstride apart. Columns of G (= rows of G^T):
//   m0/4 - (m1 + m2)/6 + (m3 + m4)/24 | (m2 - m1)/6 + (m3 - m4)/12 | -(m1 + m2)/6 + (m3 + m4)/6 + m5
template <typename T>
void inverse_filter_transform(const T* row, int64_t pstride, int64_t C, T* gw) {
  const T q4 = T(1) / 4, s6 = T(1) / 6, t12 = T(1) / 12, t24 = T(1) / 24;
  for (int64_t c0 = 0; c0 < C; c0 += CB) {
    const int64_t nc = std::min(CB, C - c0);
    alignas(64) T m[36][CB];
    for (int64_t p = 0; p < 36; ++p)
      for (int64_t c = 0; c < CB; ++c) m[p][c] = c < nc ? row[p * pstride + c0 + c] : T(0);
    alignas(64) T t[3][6][CB];  // t[r][q] = sum_p G[p][r] m[p][q]
    for (int q = 0; q < 6; ++q)
#pragma omp simd
      for (int64_t c = 0; c < CB; ++c) {
        const T a0 = m[q][c], a1 = m[6 + q][c], a2 = m[12 + q][c], a3 = m[18 + q][c], a4 = m[24 + q][c],
                a5 = m[30 + q][c];
        t[0][q][c] = a0 * q4 - (a1 + a2) * s6 + (a3 + a4) * t24;
        t[1][q][c] = (a2 - a1) * s6 + (a3 - a4) * t12;
        t[2][q][c] = (a3 + a4 - a1 - a2) * s6 + a5;
      }
    alignas(64) T o[CB][9];
    for (int r = 0; r < 3; ++r)
#pragma omp simd
      for (int64_t c = 0; c < CB; ++c) {
        const T a0 = t[r][0][c], a1 = t[r][1][c], a2 = t[r][2][c], a3 = t[r][3][c], a4 = t[r][4][c],
                a5 = t[r][5][c];
        o[c][r * 3 + 0] = a0 * q4 - (a1 + a2) * s6 + (a3 + a4) * t24;
        o[c][r * 3 + 1] = (a2 - a1) * s6 + (a3 - a4) * t12;
        o[c][r * 3 + 2] = (a3 + a4 - a1 - a2) * s6 + a5;
      }
    for (int64_t c = 0; c < nc; ++c)
      for (int j = 0; j < 9; ++j) gw[(c0 + c) * 9 + j] = o[c][j];
  }
}

// gw (K, C, 3, 3), contiguous, from x (N, C, H, W) and dz (N, K, Ho, Wo), each NCHW or channels_last.
template <typename T>
void run_grad_weight(const at::Tensor& x_in, const at::Tensor& dz_in, int64_t ph, int64_t pw, T* gw) {
  const auto is_cl = [](const at::Tensor& t) {
    return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
  };
  const bool x_cl = is_cl(x_in), dz_cl = is_cl(dz_in);  // each read in its own layout
  const at::Tensor x = x_in.contiguous(x_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor dz = dz_in.contiguous(dz_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = dz.size(1);
  const int64_t Ho = dz.size(2), Wo = dz.size(3), th = (Ho + 3) / 4, tw = (Wo + 3) / 4, per_image = th * tw;
  const int64_t tiles = N * per_image, elem = sizeof(T);
  const T* xp = x.data_ptr<T>();
  const T* dp = dz.data_ptr<T>();
  const int64_t vs = pad_stride(tiles * C, elem), ds = pad_stride(tiles * K, elem);
  thread_local std::vector<T> Vkeep, Dkeep;
  at::Tensor Vbig, Dbig;
  T* Vp = scratch(Vkeep, Vbig, 36 * vs);
  T* Dp = scratch(Dkeep, Dbig, 36 * ds);
  Prof prof;  // phases here: 0 the transforms of x and dz, 2 the GEMMs, 3 the inverse filter transform
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    int64_t tm = prof.mark();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / per_image, r = t % per_image, h0 = (r / tw) * 4, w0 = (r % tw) * 4;
      const Img<T> xi{xp + n * C * H * W, H, W, C, x_cl ? 1 : H * W, x_cl ? W * C : W, x_cl ? C : 1};
      input_transform(xi, h0 - ph, w0 - pw, Vp + t * C, vs);
      const Img<T> di{dp + n * K * Ho * Wo, Ho, Wo, K, dz_cl ? 1 : Ho * Wo, dz_cl ? Wo * K : Wo, dz_cl ? K : 1};
      dz_transform(di, h0, w0, Dp + t * K, ds);
    }
    prof.add(0, tm);
  });
  const int64_t budget = env_int("PYDL_WINOGRAD_UKB", 1024) * 1024, threads = at::get_num_threads();
  int64_t kb = std::max<int64_t>(1, budget / (36 * C * elem));
  int64_t chunks = (K + kb - 1) / kb;
  chunks = (chunks + threads - 1) / threads * threads;
  kb = std::max<int64_t>(1, (K + chunks - 1) / chunks);
  chunks = (K + kb - 1) / kb;
  at::parallel_for(0, chunks, 1, [&](int64_t j0, int64_t j1) {
    thread_local std::vector<T> dU;
    const int64_t us = pad_stride(kb * C, elem);
    T* dUp = aligned(dU, 36 * us);
    int64_t tm = prof.mark();
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k0 = j * kb, nk = std::min(kb, K - k0);
      for (int64_t p = 0; p < 36; ++p)  // dU[p] (nk x C) = D[p][:, k0:k0+nk]^T (nk x tiles) . V[p] (tiles x C)
        gemm<T>(nk, C, tiles, Dp + p * ds + k0, K, true, Vp + p * vs, C, false, dUp + p * us, C);
      prof.add(2, tm);
      for (int64_t k = 0; k < nk; ++k) inverse_filter_transform(dUp + k * C, us, C, gw + (k0 + k) * C * 9);
      prof.add(3, tm);
    }
  });
  prof.print("grad-weight", "chunks", false, tiles, C, K);
}

// ---- the crossover table ------------------------------------------------------------------------------
// Where "auto" takes Winograd. Measured with `python -m benchmarks.bench_conv2d --crossover --cpu-time
// --batches 1,2,8,32` (pydl Winograd vs pydl direct, fp32, C = K, post-ReLU inputs, 1 thread, thread CPU
// time, 7 interleaved rounds; 2-core AVX-512 Xeon shared with other jobs, 2026-12-03; the tables in
// benchmarks/results/cpu-winograd-crossover/cpu-time.md). Forward speed-up of Winograd over direct, fwd+bwd
// in brackets (grad-input followed the same choice; grad-weight was direct in both then -- it follows the
// choice now, up to 512 tiles, 1.4-1.9x faster than direct at the N=2 ResNet stages, so fwd+bwd only gains):
//
//   tiles = N * ceil(Ho/4) * ceil(Wo/4)
//   size (tiles)  7, N=1 (4)   7, N=2 (8)   14, N=2 (32)  28, N=2 (98)  56, N=2 (392)
//   16            1.02 (1.04)  1.10 (1.05)  1.24 (1.11)   1.48 (1.19)   1.32 (1.18)
//   32            1.03 (1.00)  1.13 (1.08)  1.31 (1.13)   1.58 (1.28)   1.56 (1.29)
//   64            0.84 (0.94)  0.96 (1.00)  1.15 (1.13)   1.64 (1.39)   1.67 (1.40)
//   128           0.98 (1.03)  1.02 (1.07)  1.53 (1.28)   2.08 (1.53)   1.93 (1.51)
//   256           1.12 (1.04)  1.40 (1.20)  1.50 (1.27)   1.91 (1.32)   2.13 (1.59)
//   512           1.19 (1.09)  1.73 (1.20)  1.64 (1.26)   1.89 (1.40)   1.98 (1.56)
//   N=8 and N=32 (16 tiles and more): every shape wins, 1.21-2.68 (1.10-1.79), but for one noisy
//   fwd+bwd row (512@14 N=32: 0.94, quartiles 0.90-1.40).
// (64 and 128 channels at 4-8 tiles were measured before few tiles took the small-batch scheme, which
// brings 64@7 to 1.03 / 1.15 at N=1 / 2.) So: from 8 tiles on, Winograd; below, U's transform is not
// repaid reliably (within a few % either way): direct. Below 16 channels nothing was measured: direct.
bool wins(int64_t N, int64_t C, int64_t K, int64_t Ho, int64_t Wo) {
  const int64_t tiles = N * ((Ho + 3) / 4) * ((Wo + 3) / 4), ch = std::min(C, K);
  return ch >= 16 && tiles >= 8;
}

}  // namespace

bool supported(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
               at::IntArrayRef dilation, int64_t groups, int64_t max_padding) {
  const auto dt = x.scalar_type();
  return (dt == at::kFloat || dt == at::kDouble) && groups == 1 && w.size(2) == 3 && w.size(3) == 3 &&
         stride[0] == 1 && stride[1] == 1 && dilation[0] == 1 && dilation[1] == 1 && padding[0] <= max_padding &&
         padding[1] <= max_padding && x.size(1) > 0 && x.numel() > 0;
}

bool use_forward(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                 at::IntArrayRef dilation, int64_t groups) {
  if (t_algo == kDirect || !supported(x, w, stride, padding, dilation, groups, INT64_MAX)) return false;
  if (t_algo == kWinograd) return true;
  return wins(x.size(0), x.size(1), w.size(0), x.size(2) + 2 * padding[0] - 2, x.size(3) + 2 * padding[1] - 2);
}

bool use_backward_input(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups) {
  // grad-input is a conv with padding 2 - p: p <= 2
  if (t_algo == kDirect || !supported(x, w, stride, padding, dilation, groups, 2)) return false;
  if (t_algo == kWinograd) return true;
  return wins(x.size(0), w.size(0), x.size(1), x.size(2), x.size(3));
}

bool use_backward_weight(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  if (t_algo == kDirect || !supported(x, w, stride, padding, dilation, groups, INT64_MAX)) return false;
  if (t_algo == kWinograd) return true;
  const int64_t Ho = x.size(2) + 2 * padding[0] - 2, Wo = x.size(3) + 2 * padding[1] - 2;
  const int64_t tiles = x.size(0) * ((Ho + 3) / 4) * ((Wo + 3) / 4);
  // Measured (1 thread, CPU time, grad-weight alone, Winograd vs direct): the N=2 ResNet stages 1.4-1.9x;
  // N=32: 256@14 (512 tiles) 1.29x, 512@7 1.33x, 64@14 1.06x; 16..32 channels up to 392 tiles 0.94-1.3x.
  // Beyond 512 tiles: direct -- V and D of all tiles at once grow with the batch (2 x 58 MB at 64@56, N=32),
  // and 16@28 at N=32 (1568 tiles) was 0.92x.
  return tiles <= 512 && wins(x.size(0), x.size(1), w.size(0), Ho, Wo);
}

void backward_weight(const at::Tensor& x, const at::Tensor& dz, int64_t ph, int64_t pw, at::Tensor& gw) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pydl_conv2d_winograd_backward_weight", [&] {
    run_grad_weight<scalar_t>(x, dz, ph, pw, gw.data_ptr<scalar_t>());
  });
}

void forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t ph, int64_t pw,
             const Act<double>& act, bool out_cl, at::Tensor& y, at::Tensor& z) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pydl_conv2d_winograd", [&] {
    const at::Tensor bc = b.defined() ? b.contiguous() : b, wc = w.contiguous();
    const int64_t C = w.size(1);
    const Filt<scalar_t> f{wc.data_ptr<scalar_t>(), C * 9, 1, true};  // w[k, c, t]: o = k, i = c
    run<scalar_t>(x, f, w.size(0), bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, ph, pw, act, out_cl,
                  y.data_ptr<scalar_t>(), z.defined() && z.numel() > 0 ? z.data_ptr<scalar_t>() : nullptr);
  });
}

void backward_input(const at::Tensor& dz, const at::Tensor& w, int64_t ph, int64_t pw, bool out_cl, at::Tensor& gx) {
  // dx[c, h, w] = sum_{k, r, s} dz[k, h + p - r, w + p - s] w[k, c, r, s]: a stride-1 conv of dz with the
  // filter flipped in space and transposed in channels, w'[c, k, r, s] = w[k, c, 2 - r, 2 - s], padding 2 - p.
  // The filter transform reads w' out of w in place (Filt's strides), tap t of w' being tap 8 - t of w.
  const at::Tensor wc = w.contiguous();
  Act<double> none;
  none.kind = kActNone;
  none.leak = none.sub = 0;
  none.maxv = 0;
  AT_DISPATCH_FLOATING_TYPES(dz.scalar_type(), "pydl_conv2d_winograd_backward_input", [&] {
    const int64_t Cf = w.size(1);  // grad-input maps the forward's K channels (dz) to its C
    const Filt<scalar_t> f{wc.data_ptr<scalar_t>() + 8, Cf * 9, -1, false};  // o = c' (w's k), i = k' (w's c)
    run<scalar_t>(dz, f, Cf, nullptr, 2 - ph, 2 - pw, none, out_cl, gx.data_ptr<scalar_t>(), nullptr);
  });
}

}  // namespace winograd
}  // namespace pydl

namespace {
// Sets this thread's algorithm for the CPU conv2d ops that follow (0 auto, 1 direct, 2 winograd); returns
// the previous one. pydl/ops/conv2d.py calls it before each CPU conv, from the same thread.
int64_t conv2d_set_algo(int64_t algo) {
  PYDL_CHECK_VALUE(algo >= 0 && algo <= 2, "conv2d_set_algo: algo must be 0 (auto), 1 (direct) or 2 (winograd), got ",
                   algo);
  const int64_t prev = pydl::winograd::t_algo;
  pydl::winograd::t_algo = algo;
  return prev;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) { m.def("conv2d_set_algo(int algo) -> int", &conv2d_set_algo); }
