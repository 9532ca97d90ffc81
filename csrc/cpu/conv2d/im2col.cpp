// conv2d on the CPU, part: im2col and col2im -- the gather of the input values an output tile reads into a
// GEMM operand, and the scatter of a GEMM result back onto grad_x (csrc/cpu/conv2d.cpp's top comment has the
// two layouts).
#include "conv2d_internal.h"

namespace pydl {
namespace conv_cpu {

// ---- im2col / col2im, NCHW: buffer (K x TL), row k = (ci, i, j) ------------------------------------------
template <typename scalar_t, typename acc_t>
void im2col_nchw(const Geom& g, const scalar_t* __restrict__ x, int64_t p0, int64_t tl, acc_t* __restrict__ buf) {
  // x points at channel 0 of this image's group (channel stride H*W)
  if (g.sw == 2 && g.kw == 3 && g.dw == 1) {
    // 3x3 stride 2 (ResNet's downsampling convs): the three taps of a kernel row read the same input row at
    // 2wo-pw, 2wo-pw+1, 2wo-pw+2 -- one pass over that row writes all three im2col rows, from shared loads.
    int64_t lo[3], hi[3];
    for (int64_t j = 0; j < 3; ++j) valid_cols(g, j, lo[j], hi[j]);
    for (int64_t ci = 0; ci < g.Cg; ++ci)
      for (int64_t i = 0; i < g.kh; ++i) {
        acc_t* __restrict__ r0 = buf + ((ci * g.kh + i) * 3) * tl;
        acc_t* __restrict__ r1 = r0 + tl;
        acc_t* __restrict__ r2 = r1 + tl;
        for (int64_t p = p0; p < p0 + tl;) {
          const int64_t ho = p / g.Wo, wo0 = p - ho * g.Wo;
          const int64_t wo1 = std::min(g.Wo, wo0 + (p0 + tl - p));
          const int64_t d = (p - p0) - wo0;  // row[d + wo] is output column wo
          const int64_t hi_in = ho * g.sh - g.ph + i * g.dh;
          if (hi_in < 0 || hi_in >= g.H) {
            for (int64_t wo = wo0; wo < wo1; ++wo) r0[d + wo] = r1[d + wo] = r2[d + wo] = acc_t(0);
          } else {
            const scalar_t* __restrict__ xb = x + (ci * g.H + hi_in) * g.W - g.pw;  // xb[2wo + j]
            const int64_t a = std::max({lo[0], lo[1], lo[2], wo0});
            const int64_t b = std::max(a, std::min({hi[0], hi[1], hi[2], wo1}));
            for (int64_t j = 0; j < 3; ++j) {  // the edges (padding), per tap
              acc_t* __restrict__ r = r0 + j * tl + d;
              for (int64_t wo = wo0; wo < a; ++wo) r[wo] = (wo >= lo[j] && wo < hi[j]) ? acc_t(xb[2 * wo + j]) : acc_t(0);
              for (int64_t wo = b; wo < wo1; ++wo) r[wo] = (wo >= lo[j] && wo < hi[j]) ? acc_t(xb[2 * wo + j]) : acc_t(0);
            }
            acc_t* __restrict__ o0 = r0 + d;
            acc_t* __restrict__ o1 = r1 + d;
            acc_t* __restrict__ o2 = r2 + d;
            for (int64_t wo = a; wo < b; ++wo) {
              o0[wo] = acc_t(xb[2 * wo]);
              o1[wo] = acc_t(xb[2 * wo + 1]);
              o2[wo] = acc_t(xb[2 * wo + 2]);
            }
          }
          p += wo1 - wo0;
        }
      }
    return;
  }
  for (int64_t ci = 0; ci < g.Cg; ++ci)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        acc_t* __restrict__ row = buf + ((ci * g.kh + i) * g.kw + j) * tl;
        int64_t lo, hi;
        valid_cols(g, j, lo, hi);
        const int64_t off = j * g.dw - g.pw;
        for (int64_t p = p0; p < p0 + tl;) {
          const int64_t ho = p / g.Wo, wo0 = p - ho * g.Wo;
          const int64_t wo1 = std::min(g.Wo, wo0 + (p0 + tl - p));
          acc_t* __restrict__ out = row + (p - p0) - wo0;  // out[wo] for wo in [wo0, wo1)
          const int64_t hi_in = ho * g.sh - g.ph + i * g.dh;
          if (hi_in < 0 || hi_in >= g.H) {
            for (int64_t wo = wo0; wo < wo1; ++wo) out[wo] = acc_t(0);
          } else {
            const scalar_t* __restrict__ xr = x + (ci * g.H + hi_in) * g.W + off;
            const int64_t a = std::max(lo, wo0), b = std::max(a, std::min(hi, wo1));
            for (int64_t wo = wo0; wo < a; ++wo) out[wo] = acc_t(0);
            if (g.sw == 1) {
              for (int64_t wo = a; wo < b; ++wo) out[wo] = acc_t(xr[wo]);
            } else if (g.sw == 2) {  // a constant stride vectorises (even lanes of two loads); a variable one
              for (int64_t wo = a; wo < b; ++wo) out[wo] = acc_t(xr[2 * wo]);  // is a scalar gather
            } else {
              for (int64_t wo = a; wo < b; ++wo) out[wo] = acc_t(xr[wo * g.sw]);
            }
            for (int64_t wo = b; wo < wo1; ++wo) out[wo] = acc_t(0);
          }
          p += wo1 - wo0;
        }
      }
}

template <typename acc_t>
void col2im_nchw(const Geom& g, const acc_t* __restrict__ buf, int64_t p0, int64_t tl, acc_t* __restrict__ dx) {
  // dx: this image's group, (Cg, H, W) in acc_t, accumulated into
  for (int64_t ci = 0; ci < g.Cg; ++ci)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const acc_t* __restrict__ row = buf + ((ci * g.kh + i) * g.kw + j) * tl;
        int64_t lo, hi;
        valid_cols(g, j, lo, hi);
        const int64_t off = j * g.dw - g.pw;
        for (int64_t p = p0; p < p0 + tl;) {
          const int64_t ho = p / g.Wo, wo0 = p - ho * g.Wo;
          const int64_t wo1 = std::min(g.Wo, wo0 + (p0 + tl - p));
          const int64_t hi_in = ho * g.sh - g.ph + i * g.dh;
          if (hi_in >= 0 && hi_in < g.H) {
            const acc_t* __restrict__ in = row + (p - p0) - wo0;
            acc_t* __restrict__ xr = dx + (ci * g.H + hi_in) * g.W + off;
            const int64_t a = std::max(lo, wo0), b = std::max(a, std::min(hi, wo1));
            if (g.sw == 1) {
              for (int64_t wo = a; wo < b; ++wo) xr[wo] += in[wo];  // distinct wo -> distinct wi: vectorises
            } else if (g.sw == 2) {
              for (int64_t wo = a; wo < b; ++wo) xr[2 * wo] += in[wo];
            } else {
              for (int64_t wo = a; wo < b; ++wo) xr[wo * g.sw] += in[wo];
            }
          }
          p += wo1 - wo0;
        }
      }
}

// ---- im2col / col2im, NHWC: buffer (TL x K'), column k' = (i, j, ci) --------------------------------------
template <typename scalar_t, typename acc_t>
void im2col_nhwc(const Geom& g, const scalar_t* __restrict__ x, int64_t p0, int64_t tl, acc_t* __restrict__ buf) {
  // x points at (n, 0, 0, g*Cg): pixel (h, w) channel c is x[(h*W + w)*C + c]. p may run past this image
  // into the next ones (output pixel p of the batch is image p / L): small images tile across the batch.
  for (int64_t p = p0; p < p0 + tl; ++p) {
    const int64_t n = p / g.L, r = p - n * g.L;
    const int64_t ho = r / g.Wo, wo = r - ho * g.Wo;
    const scalar_t* __restrict__ xn = x + n * g.H * g.W * g.C;
    acc_t* __restrict__ dst = buf + (p - p0) * g.K;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t hi = ho * g.sh - g.ph + i * g.dh;
      for (int64_t j = 0; j < g.kw; ++j, dst += g.Cg) {
        const int64_t wi = wo * g.sw - g.pw + j * g.dw;
        if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W) {
          for (int64_t c = 0; c < g.Cg; ++c) dst[c] = acc_t(0);
        } else {
          const scalar_t* __restrict__ src = xn + (hi * g.W + wi) * g.C;
          for (int64_t c = 0; c < g.Cg; ++c) dst[c] = acc_t(src[c]);
        }
      }
    }
  }
}

template <typename acc_t>
void col2im_nhwc(const Geom& g, const acc_t* __restrict__ buf, int64_t p0, int64_t tl, acc_t* __restrict__ dx) {
  // dx: (H, W, Cg) acc_t scratch for this image's group (dense in Cg)
  for (int64_t p = p0; p < p0 + tl; ++p) {
    const int64_t ho = p / g.Wo, wo = p - ho * g.Wo;
    const acc_t* __restrict__ src = buf + (p - p0) * g.K;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t hi = ho * g.sh - g.ph + i * g.dh;
      for (int64_t j = 0; j < g.kw; ++j, src += g.Cg) {
        const int64_t wi = wo * g.sw - g.pw + j * g.dw;
        if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W) continue;
        acc_t* __restrict__ d = dx + (hi * g.W + wi) * g.Cg;
        for (int64_t c = 0; c < g.Cg; ++c) d[c] += src[c];
      }
    }
  }
}

#define PYDL_INSTANTIATE(T)                                                                                  \
  template void im2col_nchw(const Geom&, const T* __restrict__, int64_t, int64_t, at::opmath_type<T>* __restrict__); \
  template void im2col_nhwc(const Geom&, const T* __restrict__, int64_t, int64_t, at::opmath_type<T>* __restrict__);
PYDL_CONV_DTYPES(PYDL_INSTANTIATE)
#undef PYDL_INSTANTIATE
template void col2im_nchw(const Geom&, const float* __restrict__, int64_t, int64_t, float* __restrict__);
template void col2im_nchw(const Geom&, const double* __restrict__, int64_t, int64_t, double* __restrict__);
template void col2im_nhwc(const Geom&, const float* __restrict__, int64_t, int64_t, float* __restrict__);
template void col2im_nhwc(const Geom&, const double* __restrict__, int64_t, int64_t, double* __restrict__);

}  // namespace conv_cpu
}  // namespace pydl
