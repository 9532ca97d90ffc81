// conv2d on the CPU, part: depthwise convs (one input and one output channel per group), forward and backward
// as direct loops -- with K = kh*kw taps a GEMM per channel would be all overhead.
#include <vector>

#include "conv2d_internal.h"
#include "epilogue.h"

namespace pydl {
namespace conv_cpu {

// Depthwise (Cg == Cog == 1): a direct convolution, no GEMM.
template <typename scalar_t>
void depthwise_forward(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const at::Tensor& b_acc,
                       const Act<at::opmath_type<scalar_t>>& act, scalar_t* y, scalar_t* z) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* wp = w_acc.data_ptr<acc_t>();  // (C, kh, kw) for NCHW; (kh, kw, C) for NHWC
  const acc_t* bp = b_acc.data_ptr<acc_t>();  // (C,), zeros if no bias
  const int64_t C = g.C, KK = g.kh * g.kw;
  with_act(act.kind, [&](auto kind_c) {
    constexpr int KIND = decltype(kind_c)::value;
    if (!g.cl) {
      // one task per (n, c) plane
      const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
      const bool flat = g.sh == 1 && g.sw == 1;
      at::parallel_for(0, g.N * C, 1, [&](int64_t t0, int64_t t1) {
        std::vector<acc_t> acc(flat ? g.Ho * Wp : g.Wo);
        std::vector<acc_t> pad(flat ? Hp * Wp + (g.kw - 1) * g.dw : 0, acc_t(0));
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t c = t % C;
          const scalar_t* xp = x + t * g.H * g.W;
          if (flat) {
            // Stride 1: copy the plane into a zero-padded (Hp x Wp) buffer once; then output (ho, wo) reads
            // pad[(ho + i*dh)*Wp + wo + j*dw], i.e. every tap is ONE shifted pass over a flat array of Ho*Wp
            // values (columns wo >= Wo are computed and thrown away). Long branch-free loops instead of
            // kh*kw short ones per output row: a 28-wide row is under two AVX-512 vectors.
            for (int64_t h = 0; h < g.H; ++h) {
              acc_t* __restrict__ dst = pad.data() + (h + g.ph) * Wp + g.pw;
              const scalar_t* __restrict__ src = xp + h * g.W;
              for (int64_t w = 0; w < g.W; ++w) dst[w] = acc_t(src[w]);
            }
            const int64_t n_out = g.Ho * Wp;
            acc_t* __restrict__ a = acc.data();
            if (g.kh == 3 && g.kw == 3) {
              // 3x3 (the depthwise conv of MobileNets / ConvNeXt-style blocks): all nine taps summed in a
              // register per vector of outputs, one store -- tap by tap is a load + store of `a` per FMA.
              const acc_t* wc = wp + c * KK;
              const acc_t w0 = wc[0], w1 = wc[1], w2 = wc[2], w3 = wc[3], w4 = wc[4], w5 = wc[5], w6 = wc[6],
                          w7 = wc[7], w8 = wc[8];
              const int64_t r1 = g.dh * Wp, r2 = 2 * g.dh * Wp, c1 = g.dw, c2 = 2 * g.dw;
              const acc_t* __restrict__ src = pad.data();
#pragma omp simd
              for (int64_t q = 0; q < n_out; ++q)
                a[q] = w0 * src[q] + w1 * src[q + c1] + w2 * src[q + c2] + w3 * src[q + r1] +
                       w4 * src[q + r1 + c1] + w5 * src[q + r1 + c2] + w6 * src[q + r2] + w7 * src[q + r2 + c1] +
                       w8 * src[q + r2 + c2];
            } else {
              for (int64_t q = 0; q < n_out; ++q) a[q] = acc_t(0);
              for (int64_t i = 0; i < g.kh; ++i)
                for (int64_t j = 0; j < g.kw; ++j) {
                  const acc_t wv = wp[c * KK + i * g.kw + j];
                  const acc_t* __restrict__ src = pad.data() + i * g.dh * Wp + j * g.dw;
                  for (int64_t q = 0; q < n_out; ++q) a[q] += wv * src[q];
                }
            }
            for (int64_t ho = 0; ho < g.Ho; ++ho) {
              const int64_t o = t * g.L + ho * g.Wo;
              epilogue_run<KIND>(a + ho * Wp, g.Wo, bp[c], act, y + o, z ? z + o : nullptr);
            }
            continue;
          }
          for (int64_t ho = 0; ho < g.Ho; ++ho) {
            std::fill(acc.begin(), acc.end(), acc_t(0));
            acc_t* __restrict__ a = acc.data();
            for (int64_t i = 0; i < g.kh; ++i) {
              const int64_t hi = ho * g.sh - g.ph + i * g.dh;
              if (hi < 0 || hi >= g.H) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                int64_t lo, hiw;
                valid_cols(g, j, lo, hiw);
                const acc_t wv = wp[c * KK + i * g.kw + j];
                const scalar_t* __restrict__ xr = xp + hi * g.W + j * g.dw - g.pw;
                if (g.sw == 1) {
                  for (int64_t wo = lo; wo < hiw; ++wo) a[wo] += wv * acc_t(xr[wo]);
                } else {
                  for (int64_t wo = lo; wo < hiw; ++wo) a[wo] += wv * acc_t(xr[wo * g.sw]);
                }
              }
            }
            const int64_t o = t * g.L + ho * g.Wo;
            epilogue_run<KIND>(a, g.Wo, bp[c], act, y + o, z ? z + o : nullptr);
          }
        }
      });
    } else {
      // one task per output pixel row. Per pixel: collect the in-bounds taps (input pointer + weight row),
      // then for each chunk of 16 channels sum all taps in a 16-wide register accumulator and store once.
      // (Adding tap by tap into a C-long buffer instead costs a load and a store per FMA: store-bound.)
      constexpr int64_t CH = 16;
      at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t t0, int64_t t1) {
        std::vector<acc_t> acc(C);
        std::vector<const scalar_t*> xs(g.kh * g.kw);
        std::vector<const acc_t*> ws(g.kh * g.kw);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t n = t / g.Ho, ho = t % g.Ho;
          for (int64_t wo = 0; wo < g.Wo; ++wo) {
            int64_t nt = 0;
            for (int64_t i = 0; i < g.kh; ++i) {
              const int64_t hi = ho * g.sh - g.ph + i * g.dh;
              if (hi < 0 || hi >= g.H) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                const int64_t wi = wo * g.sw - g.pw + j * g.dw;
                if (wi < 0 || wi >= g.W) continue;
                xs[nt] = x + ((n * g.H + hi) * g.W + wi) * C;
                ws[nt++] = wp + (i * g.kw + j) * C;
              }
            }
            acc_t* __restrict__ a = acc.data();
            int64_t c0 = 0;
            for (; c0 + CH <= C; c0 += CH) {
              acc_t s[CH] = {};
              for (int64_t k = 0; k < nt; ++k) {
                const scalar_t* __restrict__ xr = xs[k] + c0;
                const acc_t* __restrict__ wr = ws[k] + c0;
#pragma omp simd
                for (int64_t c = 0; c < CH; ++c) s[c] += wr[c] * acc_t(xr[c]);
              }
              for (int64_t c = 0; c < CH; ++c) a[c0 + c] = s[c];
            }
            for (int64_t c = c0; c < C; ++c) {  // the ragged last chunk
              acc_t sc = 0;
              for (int64_t k = 0; k < nt; ++k) sc += ws[k][c] * acc_t(xs[k][c]);
              a[c] = sc;
            }
            const int64_t o = ((n * g.Ho + ho) * g.Wo + wo) * C;
            epilogue_row<KIND>(a, C, bp, act, y + o, z ? z + o : nullptr);
          }
        }
      });
    }
  });
}

// Depthwise backward (Cg == Cog == 1), direct loops: grad_x and grad_w together, one pass over dz.
// A task owns a set of channels (every image), so its grad_x elements and grad_w rows are its own: no races.
template <typename scalar_t>
void depthwise_backward(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const at::Tensor& dz,
                        scalar_t* dx, at::Tensor* gw_acc) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* wp = w_acc.data_ptr<acc_t>();  // (C, kh*kw)
  const acc_t* dzp = dz.data_ptr<acc_t>();
  acc_t* gwp = gw_acc != nullptr ? gw_acc->data_ptr<acc_t>() : nullptr;  // (C, kh*kw)
  const int64_t C = g.C, KK = g.kh * g.kw, HW = g.H * g.W;
  if (!g.cl) {
    // per channel, per image plane; dx accumulates in an acc_t plane
    const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
    const bool flat = g.sh == 1 && g.sw == 1;
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      std::vector<acc_t> dxs(HW);
      // stride 1: the forward's flat trick in reverse (see depthwise_forward). x and dx live in zero-padded
      // (Hp x Wp) planes, dz in an (Ho x Wp) plane whose extra columns are 0; every tap is then one long
      // axpy (dx) and one long dot product (dw) -- a single horizontal sum per tap and plane, not per row.
      const int64_t tail = (g.kw - 1) * g.dw;
      std::vector<acc_t> xpad(flat ? Hp * Wp + tail : 0, acc_t(0)), dxpad(flat ? Hp * Wp + tail : 0);
      // dz's plane sits after F zeros (and before more): the 3x3 path below reads it at negative shifts
      const int64_t F = (g.kh - 1) * g.dh * Wp + tail;
      std::vector<acc_t> dzbuf(flat ? F + Hp * Wp + tail : 0, acc_t(0));
      acc_t* dzw = dzbuf.data() + F;
      for (int64_t c = c0; c < c1; ++c) {
        std::vector<acc_t> dwc(KK, acc_t(0));
        for (int64_t n = 0; n < g.N; ++n) {
          const scalar_t* __restrict__ xp = x + (n * C + c) * HW;
          const acc_t* __restrict__ dzpl = dzp + (n * C + c) * g.L;
          if (flat) {
            for (int64_t h = 0; h < g.H; ++h)
              for (int64_t w = 0; w < g.W; ++w) xpad[(h + g.ph) * Wp + g.pw + w] = acc_t(xp[h * g.W + w]);
            for (int64_t ho = 0; ho < g.Ho; ++ho)
              for (int64_t wo = 0; wo < g.Wo; ++wo) dzw[ho * Wp + wo] = dzpl[ho * g.Wo + wo];
            const int64_t nq = g.Ho * Wp;
            const acc_t* __restrict__ dq = dzw;
            if (g.kh == 3 && g.kw == 3) {
              // 3x3: the nine grad_w dot products in one pass over dz (nine register accumulators, dz loaded
              // once), and grad_x as a gather -- dx[p] = sum_k w_k dz[p - shift_k], the forward's register
              // sum with the shifts negated -- over the rows dx keeps: no load + store of dx per tap.
              const int64_t o1 = g.dw, o2 = 2 * g.dw, r1 = g.dh * Wp, r2 = 2 * g.dh * Wp;
              const acc_t* __restrict__ xq = xpad.data();
              acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
              for (int64_t q = 0; q < nq; ++q) {
                const acc_t d = dq[q];
                s0 += xq[q] * d; s1 += xq[q + o1] * d; s2 += xq[q + o2] * d;
                s3 += xq[q + r1] * d; s4 += xq[q + r1 + o1] * d; s5 += xq[q + r1 + o2] * d;
                s6 += xq[q + r2] * d; s7 += xq[q + r2 + o1] * d; s8 += xq[q + r2 + o2] * d;
              }
              dwc[0] += s0; dwc[1] += s1; dwc[2] += s2; dwc[3] += s3; dwc[4] += s4;
              dwc[5] += s5; dwc[6] += s6; dwc[7] += s7; dwc[8] += s8;
              if (dx != nullptr) {
                const acc_t* wc = wp + c * KK;
                const acc_t w0 = wc[0], w1 = wc[1], w2 = wc[2], w3 = wc[3], w4 = wc[4], w5 = wc[5], w6 = wc[6],
                            w7 = wc[7], w8 = wc[8];
                acc_t* __restrict__ dxo = dxpad.data();
#pragma omp simd
                for (int64_t p = g.ph * Wp; p < (g.ph + g.H) * Wp; ++p)
                  dxo[p] = w0 * dq[p] + w1 * dq[p - o1] + w2 * dq[p - o2] + w3 * dq[p - r1] + w4 * dq[p - r1 - o1] +
                           w5 * dq[p - r1 - o2] + w6 * dq[p - r2] + w7 * dq[p - r2 - o1] + w8 * dq[p - r2 - o2];
                scalar_t* dst = dx + (n * C + c) * HW;
                for (int64_t h = 0; h < g.H; ++h)
                  for (int64_t w = 0; w < g.W; ++w) dst[h * g.W + w] = scalar_t(dxpad[(h + g.ph) * Wp + g.pw + w]);
              }
              continue;
            }
            std::fill(dxpad.begin(), dxpad.end(), acc_t(0));
            for (int64_t i = 0; i < g.kh; ++i)
              for (int64_t j = 0; j < g.kw; ++j) {
                const int64_t sh = i * g.dh * Wp + j * g.dw;
                const acc_t wv = wp[c * KK + i * g.kw + j];
                acc_t* __restrict__ dxq = dxpad.data() + sh;
                const acc_t* __restrict__ xq = xpad.data() + sh;
                acc_t sdw = 0;
#pragma omp simd reduction(+ : sdw)
                for (int64_t q = 0; q < nq; ++q) {
                  dxq[q] += wv * dq[q];
                  sdw += xq[q] * dq[q];
                }
                dwc[i * g.kw + j] += sdw;
              }
            if (dx != nullptr) {
              scalar_t* dst = dx + (n * C + c) * HW;
              for (int64_t h = 0; h < g.H; ++h)
                for (int64_t w = 0; w < g.W; ++w) dst[h * g.W + w] = scalar_t(dxpad[(h + g.ph) * Wp + g.pw + w]);
            }
            continue;
          }
          std::fill(dxs.begin(), dxs.end(), acc_t(0));
          for (int64_t ho = 0; ho < g.Ho; ++ho) {
            const acc_t* __restrict__ dzr = dzpl + ho * g.Wo;
            for (int64_t i = 0; i < g.kh; ++i) {
              const int64_t hi = ho * g.sh - g.ph + i * g.dh;
              if (hi < 0 || hi >= g.H) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                int64_t lo, hiw;
                valid_cols(g, j, lo, hiw);
                const acc_t wv = wp[c * KK + i * g.kw + j];
                const int64_t off = hi * g.W + j * g.dw - g.pw;
                acc_t* __restrict__ dxr = dxs.data() + off;
                const scalar_t* __restrict__ xr = xp + off;
                acc_t sdw = 0;
                if (g.sw == 1) {
#pragma omp simd reduction(+ : sdw)
                  for (int64_t wo = lo; wo < hiw; ++wo) {
                    dxr[wo] += wv * dzr[wo];
                    sdw += acc_t(xr[wo]) * dzr[wo];
                  }
                } else {
                  for (int64_t wo = lo; wo < hiw; ++wo) {
                    dxr[wo * g.sw] += wv * dzr[wo];
                    sdw += acc_t(xr[wo * g.sw]) * dzr[wo];
                  }
                }
                dwc[i * g.kw + j] += sdw;
              }
            }
          }
          if (dx != nullptr) {
            scalar_t* dst = dx + (n * C + c) * HW;
            for (int64_t q = 0; q < HW; ++q) dst[q] = scalar_t(dxs[q]);
          }
        }
        if (gwp != nullptr)
          for (int64_t k = 0; k < KK; ++k) gwp[c * KK + k] = dwc[k];
      }
    });
  } else {
    // channels_last: a task owns a chunk of CH channels; every pixel's update is a CH-wide vector op
    constexpr int64_t CH = 16;
    const int64_t chunks = (C + CH - 1) / CH;
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> dxs(HW * CH), dwc(KK * CH);
      for (int64_t ck = k0; ck < k1; ++ck) {
        const int64_t cb = ck * CH, nc = std::min(CH, C - cb);
        std::fill(dwc.begin(), dwc.end(), acc_t(0));
        for (int64_t n = 0; n < g.N; ++n) {
          std::fill(dxs.begin(), dxs.end(), acc_t(0));
          for (int64_t ho = 0; ho < g.Ho; ++ho)
            for (int64_t wo = 0; wo < g.Wo; ++wo) {
              const acc_t* __restrict__ d = dzp + ((n * g.Ho + ho) * g.Wo + wo) * C + cb;
              for (int64_t i = 0; i < g.kh; ++i) {
                const int64_t hi = ho * g.sh - g.ph + i * g.dh;
                if (hi < 0 || hi >= g.H) continue;
                for (int64_t j = 0; j < g.kw; ++j) {
                  const int64_t wi = wo * g.sw - g.pw + j * g.dw;
                  if (wi < 0 || wi >= g.W) continue;
                  acc_t* __restrict__ dxr = dxs.data() + (hi * g.W + wi) * CH;
                  acc_t* __restrict__ dwr = dwc.data() + (i * g.kw + j) * CH;
                  const acc_t* __restrict__ wr = wp + cb;  // w_acc is (kh*kw, C) here
                  const scalar_t* __restrict__ xr = x + ((n * g.H + hi) * g.W + wi) * C + cb;
                  const int64_t t = (i * g.kw + j) * C;
#pragma omp simd
                  for (int64_t c = 0; c < nc; ++c) {
                    dxr[c] += wr[t + c] * d[c];
                    dwr[c] += acc_t(xr[c]) * d[c];
                  }
                }
              }
            }
          if (dx != nullptr)
            for (int64_t q = 0; q < HW; ++q) {
              scalar_t* dst = dx + (n * HW + q) * C + cb;
              for (int64_t c = 0; c < nc; ++c) dst[c] = scalar_t(dxs[q * CH + c]);
            }
        }
        if (gwp != nullptr)
          for (int64_t k = 0; k < KK; ++k)
            for (int64_t c = 0; c < nc; ++c) gwp[(cb + c) * KK + k] = dwc[k * CH + c];
      }
    });
  }
}

#define PYDL_INSTANTIATE(T)                                                                                     \
  template void depthwise_forward(const Geom&, const T*, const at::Tensor&, const at::Tensor&,                 \
                                  const Act<at::opmath_type<T>>&, T*, T*);                                     \
  template void depthwise_backward(const Geom&, const T*, const at::Tensor&, const at::Tensor&, T*, at::Tensor*);
PYDL_CONV_DTYPES(PYDL_INSTANTIATE)
#undef PYDL_INSTANTIATE

}  // namespace conv_cpu
}  // namespace pydl
