// conv2d on the CPU: forward (with a fused bias + activation epilogue) and backward (grad input, grad weight,
// grad bias), for NCHW and channels_last, fp32 / fp64 / fp16 / bf16.
//
// The algorithm is tiled im2col + GEMM ("lowering" a convolution to a matrix product):
//
//   per (image n, group g, tile of TL output pixels):
//     1. im2col  -- gather, into a small buffer that stays in L2, the K = Cg*kh*kw input values every output
//                   pixel of the tile reads (zeros where a tap falls in the padding);
//     2. GEMM    -- multiply by the weight, (Cout/g x K) @ (K x TL), with at::mm: the ONE building block
//                   borrowed from ATen (it calls MKL/oneDNN's sgemm/dgemm). Everything around it is ours.
//     3. epilogue -- read the GEMM tile while it is still in cache, add the bias, apply the activation, and
//                   write y (and z, the pre-activation, when the backward will need it) in the output's
//                   layout. Fusing this loop saves a full read + write of the output per op we fused.
//
// Why tiles rather than one big im2col matrix: for a 3x3 conv the im2col matrix is 9x the input. Built whole
// it goes to DRAM and back (tens of MB for a ResNet layer); built one tile at a time it never leaves L2, and
// the copy costs a few percent of the GEMM instead of doubling the run time.
//
// Layouts. NCHW: an output tile is a run of pixels of one image, so the buffer is (K x TL) with the taps as
// rows: each row is a strided copy of one input row (contiguous for stride 1: vectorised), and the GEMM gives
// (Cout/g x TL), i.e. NCHW rows of the output. channels_last (NHWC): the buffer is (TL x K') with
// K' = (kh, kw, Cg) -- each tap is a contiguous run of Cg channels -- and the weight permuted to
// (Cout, kh, kw, Cg) to match; the GEMM gives (TL x Cout/g), i.e. NHWC rows, and a tile may span images.
// Small NCHW images (rows of <= 32 pixels, >= 16 channels per group) take the NHWC im2col too, from one
// channels_last copy of x: short rows make the NCHW copy all bookkeeping (see pick_im2col_nhwc).
//
// Backward, with dz = act'(z) * dy (computed once, in the output's layout, together with grad_bias):
//   grad_w[g] += dz_tile (Cout/g x TL) @ im2col_tile^T (TL x K)  -- per-thread partial sums, added in order;
//   grad_x    = col2im(W_g^T @ dz_tile): each tap's value added back into the input pixel it came from.
//     col2im writes overlap between tiles of one image (the halo), so a grad-x task owns a whole (n, g)
//     image: tasks never write the same element and there are no atomics.
//
// Depthwise convs (one input and one output channel per group) have K = kh*kw = 9: a GEMM per channel would be
// all overhead. They are direct convolutions instead, forward and backward: for NCHW at stride 1 each plane is
// zero-padded once so that every tap is one long shifted axpy / dot product over the flat plane; for NHWC the
// loops run along the channels.
//
// Parallelism: at::parallel_for over tasks, each GEMM single-threaded inside it (MKL does not nest). When
// there are fewer tasks than threads (batch 1, one group, small image) the tasks run in turn and each GEMM
// uses all the threads itself.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "activation.h"
#include "common.h"
#include "conv2d_args.h"
#include "conv2d/winograd.h"

namespace pydl {
namespace {

struct Geom {
  int64_t N, C, H, W;       // input
  int64_t Co, Cg, Cog, G;   // out channels, in/out channels per group, groups
  int64_t kh, kw, K;        // kernel, K = Cg*kh*kw
  int64_t Ho, Wo, L;        // output, L = Ho*Wo
  int64_t sh, sw, ph, pw, dh, dw;
  bool cl;                  // channels_last output and gradients (x came in channels_last)
  bool xcl;                 // im2col from a channels_last copy of x (always when cl; see pick_im2col)
};

// First and one-past-last output column wo in [0, Wo) whose tap j lands inside the input row:
// 0 <= wo*sw - pw + j*dw < W. Everything outside is padding. Computed once per row instead of a branch per
// element, so the copy loop between them has no condition and vectorises.
inline void valid_cols(const Geom& g, int64_t j, int64_t& lo, int64_t& hi) {
  const int64_t off = j * g.dw - g.pw;  // wi = wo*sw + off
  lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
  hi = (g.W - 1 - off) < 0 ? 0 : (g.W - 1 - off) / g.sw + 1;
  lo = std::min(lo, g.Wo);
  hi = std::min(std::max(hi, lo), g.Wo);
}

int64_t pick_tile(const Geom& g, int64_t acc_bytes, int64_t tasks_outside, int64_t pixels) {
  // ~1 MB of im2col buffer (L2 is 1-2 MB per core on current x86) and never narrower than 128 columns:
  // every GEMM call re-packs the weight (Cout/g x K, up to 2.4 MB for 256 channels x 3x3), so a wide tile
  // amortises that; a thin B also runs far below peak. Then shrink while there are fewer than 2 tasks per
  // thread (load balance). `pixels`: how many output pixels one task's tile may span.
  static const int64_t budget = [] {
    const char* kb = std::getenv("PYDL_CONV_TILE_KB");  // for experiments: the im2col buffer size
    return int64_t(kb != nullptr ? std::atoi(kb) : 1024) * 1024;
  }();
  int64_t tl = std::max<int64_t>(128, budget / std::max<int64_t>(1, g.K * acc_bytes));
  tl = std::min(tl, pixels);
  const int64_t threads = at::get_num_threads();
  while (tl > 64 && tasks_outside * ((pixels + tl - 1) / tl) < 2 * threads) tl /= 2;
  if (tl >= 16) tl -= tl % 16;  // whole vectors in the epilogue
  return std::max<int64_t>(1, tl);
}

// ---- im2col / col2im, NCHW: buffer (K x TL), row k = (ci, i, j) ------------------------------------------
template <typename scalar_t, typename acc_t>
void im2col_nchw(const Geom& g, const scalar_t* __restrict__ x, int64_t p0, int64_t tl, acc_t* __restrict__ buf) {
  // x points at channel 0 of this image's group (channel stride H*W)
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

// ---- the epilogue: bias + activation, written in the output's layout ------------------------------------
// Templated on the activation so each instance is a branch-free loop the compiler vectorises.
// NaN semantics as torch's (see csrc/activation.h): the selects fall through to z / dy when a comparison
// with NaN fails, except at the clamp, which stops the gradient at a NaN when there is one (maxv finite).
template <int KIND, typename acc_t>
inline acc_t act_fwd(acc_t z, acc_t leak, acc_t sub, acc_t maxv) {
  if (KIND == kActNone) return z;
  if (KIND == kActRelu) return z < acc_t(0) ? acc_t(0) : z;
  const acc_t y = (z < acc_t(0) ? z * leak : z) - sub;
  return y > maxv ? maxv : y;
}

template <int KIND, typename acc_t>
inline acc_t act_bwd(acc_t dy, acc_t z, acc_t leak, acc_t sub, acc_t maxv) {
  if (KIND == kActNone) return dy;
  if (KIND == kActRelu) return z <= acc_t(0) ? acc_t(0) : dy;
  const acc_t y = (z < acc_t(0) ? z * leak : z) - sub;
  const acc_t d = z > acc_t(0) ? dy : dy * leak;
  const bool stop = (y > maxv) | ((y != y) & (maxv - maxv == acc_t(0)));
  return stop ? acc_t(0) : d;
}

// One contiguous run: out[i] = act(in[i] + bias), z[i] = in[i] + bias (if z).
template <int KIND, typename scalar_t, typename acc_t>
inline void epilogue_run(const acc_t* __restrict__ in, int64_t len, acc_t bias, const Act<acc_t>& a,
                         scalar_t* __restrict__ y, scalar_t* __restrict__ z) {
  const acc_t leak = a.leak, sub = a.sub, maxv = a.maxv;
  if (z != nullptr) {
    for (int64_t i = 0; i < len; ++i) {
      const acc_t v = in[i] + bias;
      z[i] = scalar_t(v);
      y[i] = scalar_t(act_fwd<KIND>(v, leak, sub, maxv));
    }
  } else {
    for (int64_t i = 0; i < len; ++i) y[i] = scalar_t(act_fwd<KIND>(in[i] + bias, leak, sub, maxv));
  }
}

// Row-of-channels variant (NHWC): out[c] = act(in[c] + bias[c])
template <int KIND, typename scalar_t, typename acc_t>
inline void epilogue_row(const acc_t* __restrict__ in, int64_t len, const acc_t* __restrict__ bias,
                         const Act<acc_t>& a, scalar_t* __restrict__ y, scalar_t* __restrict__ z) {
  const acc_t leak = a.leak, sub = a.sub, maxv = a.maxv;
  for (int64_t c = 0; c < len; ++c) {
    const acc_t v = in[c] + bias[c];
    if (z != nullptr) z[c] = scalar_t(v);
    y[c] = scalar_t(act_fwd<KIND>(v, leak, sub, maxv));
  }
}

template <typename F>
void with_act(int kind, F&& f) {
  switch (kind) {
    case kActRelu: f(std::integral_constant<int, kActRelu>()); break;
    case kActGeneralRelu: f(std::integral_constant<int, kActGeneralRelu>()); break;
    default: f(std::integral_constant<int, kActNone>()); break;
  }
}

// A (rows x cols) matrix view of a raw buffer with leading dimension ld (no copy), for at::mm.
template <typename acc_t>
at::Tensor mat(const acc_t* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<acc_t*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// Run fn(task) for task in [0, T): in parallel when there are enough tasks, else in turn (each GEMM then
// parallelises itself).
template <typename F>
void for_tasks(int64_t T, F&& fn) {
  if (T >= at::get_num_threads() && T > 1) {
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) fn(t);
    });
  } else {
    for (int64_t t = 0; t < T; ++t) fn(t);
  }
}

// NCHW input, which im2col? The NCHW im2col copies one output row (Wo values) per (tap, row): for small
// images (ResNet's 28x28, 14x14, 7x7) those runs are short and the per-run bookkeeping costs more than the
// copy. Transposing x to channels_last once (one pass over the input) turns every tap into a contiguous run
// of Cg channels instead. Worth it when rows are short and channel runs long. PYDL_CONV_IM2COL=nchw|nhwc
// forces one or the other (try both on your machine).
bool pick_im2col_nhwc(const Geom& g) {
  static const char* force = std::getenv("PYDL_CONV_IM2COL");
  if (force != nullptr && std::string(force) == "nchw") return false;
  if (force != nullptr && std::string(force) == "nhwc") return true;
  return g.Cg >= 16 && g.Wo <= 32 && !(g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0);
}

Geom make_geom(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
               at::IntArrayRef dilation, int64_t groups) {
  Geom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.Co = w.size(0); g.Cg = w.size(1); g.kh = w.size(2); g.kw = w.size(3);
  g.G = groups; g.Cog = g.Co / groups; g.K = g.Cg * g.kh * g.kw;
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1]; g.dh = dilation[0]; g.dw = dilation[1];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  g.L = g.Ho * g.Wo;
  // channels_last in -> channels_last out (the rule of pydl/ops/conv2d.py: out_memory_format)
  g.cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  // depthwise convs run direct loops in the input's own layout: no im2col to choose
  g.xcl = g.cl || (!(g.Cg == 1 && g.Cog == 1) && pick_im2col_nhwc(g));
  return g;
}

Act<double> make_act(const std::string& act, double leak, double sub, double maxv) {
  Act<double> a;
  if (act == "none") a.kind = kActNone;
  else if (act == "relu") a.kind = kActRelu;
  else if (act == "general_relu") a.kind = kActGeneralRelu;
  else PYDL_CHECK_VALUE(false, "conv2d: act must be none, relu or general_relu, got ", act);
  a.leak = leak; a.sub = sub; a.maxv = maxv;
  return a;
}

template <typename acc_t>
Act<acc_t> cast_act(const Act<double>& a) {
  return Act<acc_t>{a.kind, acc_t(a.leak), acc_t(a.sub), acc_t(a.maxv)};
}

// =========================================================================================================
// Forward
// =========================================================================================================

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
            for (int64_t q = 0; q < n_out; ++q) a[q] = acc_t(0);
            for (int64_t i = 0; i < g.kh; ++i)
              for (int64_t j = 0; j < g.kw; ++j) {
                const acc_t wv = wp[c * KK + i * g.kw + j];
                const acc_t* __restrict__ src = pad.data() + i * g.dh * Wp + j * g.dw;
                for (int64_t q = 0; q < n_out; ++q) a[q] += wv * src[q];
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

template <typename scalar_t>
void gemm_forward(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const at::Tensor& b_acc,
                  const Act<at::opmath_type<scalar_t>>& act, scalar_t* y, scalar_t* z) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* wp = w_acc.data_ptr<acc_t>();  // (Co, K), K in (ci, i, j) order for NCHW, (i, j, ci) for NHWC
  const acc_t* bp = b_acc.data_ptr<acc_t>();
  // 1x1, stride 1, no padding, input already in acc_t: the input IS the im2col matrix; skip the copy.
  const bool direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 &&
                      std::is_same<scalar_t, acc_t>::value;
  // NCHW im2col: tiles within one image. NHWC im2col: tiles over the batch's pixels (rows of the im2col
  // matrix are pixels, whichever image they belong to), so small late-ResNet images still give wide GEMMs.
  const int64_t pixels = g.xcl ? g.N * g.L : g.L;
  const int64_t images = g.xcl ? 1 : g.N;
  const int64_t TL = pick_tile(g, sizeof(acc_t), images * g.G, pixels);
  const int64_t tiles = (pixels + TL - 1) / TL;
  const int64_t T = images * g.G * tiles;
  with_act(act.kind, [&](auto kind_c) {
    constexpr int KIND = decltype(kind_c)::value;
    for_tasks(T, [&](int64_t t) {
      // thread-local scratch, reused across this thread's tasks
      thread_local std::vector<acc_t> buf, out;
      buf.resize(direct ? 0 : g.K * TL);
      out.resize(g.Cog * TL);
      const int64_t n = t / (g.G * tiles), gi = (t / tiles) % g.G, p0 = (t % tiles) * TL;
      const int64_t tl = std::min(TL, pixels - p0);
      const at::Tensor wg = mat(wp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
      if (!g.xcl) {
        const scalar_t* xg = x + (n * g.C + gi * g.Cg) * g.H * g.W;
        at::Tensor cols;
        if (direct) {
          cols = mat(reinterpret_cast<const acc_t*>(xg) + p0, g.K, tl, g.H * g.W);
        } else {
          im2col_nchw(g, xg, p0, tl, buf.data());
          cols = mat(buf.data(), g.K, tl, tl);
        }
        at::Tensor o = mat(out.data(), g.Cog, tl, tl);
        at::mm_out(o, wg, cols);  // (Cog x K) @ (K x tl)
        for (int64_t co = 0; co < g.Cog; ++co) {
          const int64_t c = gi * g.Cog + co;
          const int64_t dst = (n * g.Co + c) * g.L + p0;
          epilogue_run<KIND>(out.data() + co * tl, tl, bp[c], act, y + dst, z ? z + dst : nullptr);
        }
      } else {
        const scalar_t* xg = x + gi * g.Cg;  // p0 is a pixel of the whole batch here
        at::Tensor rows;
        if (direct) {
          rows = mat(reinterpret_cast<const acc_t*>(xg) + p0 * g.C, tl, g.K, g.C);
        } else {
          im2col_nhwc(g, xg, p0, tl, buf.data());
          rows = mat(buf.data(), tl, g.K, g.K);
        }
        if (g.cl) {
          at::Tensor o = mat(out.data(), tl, g.Cog, g.Cog);
          at::mm_out(o, rows, wg.t());  // (tl x K) @ (K x Cog): NHWC rows of the output
          for (int64_t p = 0; p < tl; ++p) {
            const int64_t dst = (p0 + p) * g.Co + gi * g.Cog;
            epilogue_row<KIND>(out.data() + p * g.Cog, g.Cog, bp + gi * g.Cog, act, y + dst, z ? z + dst : nullptr);
          }
        } else {  // NCHW output from an NHWC im2col: the same product, transposed, gives NCHW rows
          at::Tensor o = mat(out.data(), g.Cog, tl, tl);
          at::mm_out(o, wg, rows.t());  // (Cog x K) @ (K x tl)
          for (int64_t co = 0; co < g.Cog; ++co) {
            const int64_t c = gi * g.Cog + co;
            // the tile's pixels may span images: one contiguous run per image
            for (int64_t p = p0; p < p0 + tl;) {
              const int64_t img = p / g.L, end = std::min(p0 + tl, (img + 1) * g.L);
              const int64_t dst = (img * g.Co + c) * g.L + (p - img * g.L);
              epilogue_run<KIND>(out.data() + co * tl + (p - p0), end - p, bp[c], act, y + dst,
                                 z ? z + dst : nullptr);
              p = end;
            }
          }
        }
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> conv2d_cpu(const at::Tensor& x_in, const at::Tensor& w,
                                              const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                              c10::string_view act_name, double leak, double sub, double maxv,
                                              bool save_preact) {
  check_conv2d_args(x_in, w, b, stride, padding, dilation, groups, c10::DeviceType::CPU, "conv2d");
  const Act<double> act = make_act(std::string(act_name), leak, sub, maxv);
  if (x_in.size(1) == 0) {  // torch's answer for an input without channels: an empty (N, 0, Ho, Wo) output
    const auto out = conv2d_out_shape(x_in, w, stride, padding, dilation);
    const auto fmt = (!x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast))
                         ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const at::Tensor y = at::empty(out, x_in.options().memory_format(fmt));
    return {y, save_preact && act.kind == kActGeneralRelu ? at::empty_like(y) : at::empty({0}, x_in.options())};
  }
  Geom g = make_geom(x_in, w, stride, padding, dilation, groups);
  const auto fmt = g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const bool dw = g.Cg == 1 && g.Cog == 1;
  const at::Tensor x = x_in.contiguous(g.xcl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options().memory_format(fmt));
  const bool keep_z = save_preact && act.kind == kActGeneralRelu;
  at::Tensor z = keep_z ? at::empty_like(y) : at::empty({0}, x.options());
  if (y.numel() == 0) return {y, z};
  if (winograd::use_forward(x_in, w, stride, padding, dilation, groups)) {  // 3x3 stride 1: conv2d/winograd.cpp
    winograd::forward(x_in, w, b.has_value() ? *b : at::Tensor(), g.ph, g.pw, act, g.cl, y, z);
    return {y, z};
  }
  // The weight in the accumulator type and in the K order of the layout (see the file comment). Tiny next to
  // the activations, so copying it per call is cheap.
  at::Tensor w_acc = dw ? (g.cl ? w.reshape({g.Co, g.kh * g.kw}).t() : w.reshape({g.Co, g.kh * g.kw}))
                        : (g.xcl ? w.permute({0, 2, 3, 1}) : w);
  w_acc = w_acc.to(acc_type).contiguous();
  const at::Tensor b_acc = b.has_value() ? b->to(acc_type).contiguous() : at::zeros({g.Co}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Act<acc_t> a = cast_act<acc_t>(act);
    scalar_t* zp = keep_z ? z.data_ptr<scalar_t>() : nullptr;
    if (dw) {
      depthwise_forward<scalar_t>(g, x.data_ptr<scalar_t>(), w_acc, b_acc, a, y.data_ptr<scalar_t>(), zp);
    } else {
      gemm_forward<scalar_t>(g, x.data_ptr<scalar_t>(), w_acc, b_acc, a, y.data_ptr<scalar_t>(), zp);
    }
  });
  return {y, z};
}

// =========================================================================================================
// Backward
// =========================================================================================================

// dz = act'(z) * dy in acc_t (in the output's layout), and grad_bias = sum of dz per channel.
// Returns dz; may return grad_y itself (no copy) when there is no activation and it is already acc_t.
template <typename scalar_t>
at::Tensor make_dz(const Geom& g, const at::Tensor& dy, const at::Tensor& zs, const Act<double>& act_d,
                   at::Tensor* grad_b) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const Act<acc_t> act = cast_act<acc_t>(act_d);
  at::Tensor dz;
  const int64_t total = dy.numel();
  if (act.kind == kActNone && std::is_same<scalar_t, acc_t>::value) {
    dz = dy;
  } else {
    dz = at::empty(dy.sizes(), dy.options().dtype(acc_type).memory_format(
                                    g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
    const scalar_t* d = dy.data_ptr<scalar_t>();
    const scalar_t* zp = act.kind == kActNone ? nullptr : zs.data_ptr<scalar_t>();
    acc_t* o = dz.data_ptr<acc_t>();
    const acc_t leak = act.leak, sub = act.sub, maxv = act.maxv;
    with_act(act.kind, [&](auto kind_c) {
      constexpr int KIND = decltype(kind_c)::value;
      at::parallel_for(0, total, 1 << 14, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          o[i] = act_bwd<KIND>(acc_t(d[i]), zp ? acc_t(zp[i]) : acc_t(0), leak, sub, maxv);
      });
    });
  }
  if (grad_b != nullptr) {
    // Per-channel sums in acc_t with SIMD lanes (omp simd reduction); the lanes and blocks are merged in a
    // fixed order, so the result is deterministic.
    at::Tensor gb = at::empty({g.Co}, dy.options().dtype(acc_type));
    acc_t* gbp = gb.data_ptr<acc_t>();
    const acc_t* dzp = dz.data_ptr<acc_t>();
    if (!g.cl) {
      at::parallel_for(0, g.Co, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          acc_t s = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const acc_t* p = dzp + (n * g.Co + c) * g.L;
            acc_t sn = 0;
#pragma omp simd reduction(+ : sn)
            for (int64_t l = 0; l < g.L; ++l) sn += p[l];
            s += sn;
          }
          gbp[c] = s;
        }
      });
    } else {
      const int64_t rows = g.N * g.L;
      const int64_t B = std::max<int64_t>(1, std::min<int64_t>(rows, 4 * at::get_num_threads()));
      std::vector<acc_t> part(B * g.Co, acc_t(0));
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t bi = b0; bi < b1; ++bi) {
          acc_t* __restrict__ s = part.data() + bi * g.Co;
          for (int64_t r = bi * rows / B; r < (bi + 1) * rows / B; ++r) {
            const acc_t* __restrict__ p = dzp + r * g.Co;
            for (int64_t c = 0; c < g.Co; ++c) s[c] += p[c];
          }
        }
      });
      for (int64_t c = 0; c < g.Co; ++c) gbp[c] = 0;
      for (int64_t bi = 0; bi < B; ++bi)
        for (int64_t c = 0; c < g.Co; ++c) gbp[c] += part[bi * g.Co + c];
    }
    *grad_b = gb;
  }
  return dz;
}

template <typename scalar_t>
void backward_weight(const Geom& g, const scalar_t* x, const at::Tensor& dz, at::Tensor& gw_acc) {
  // gw_acc: (Co, K) in acc_t, K in the layout's order. Each thread sums its tasks into its own partial.
  // Here the GEMM's reduction runs over the tile's pixels, and every addmm reads and writes the whole
  // (Cog x K) partial: a narrow tile makes that traffic dominate (for 256 channels x 3x3 it is 2.4 MB per call).
  // So the tiles are wider than the forward's (>= 512 pixels), and with the NHWC im2col they span the batch.
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* dzp = dz.data_ptr<acc_t>();
  const int64_t pixels = g.xcl ? g.N * g.L : g.L;
  const int64_t images = g.xcl ? 1 : g.N;
  int64_t TL = std::min(pixels, std::max<int64_t>(512, pick_tile(g, sizeof(acc_t), images * g.G, pixels)));
  const int64_t tiles = (pixels + TL - 1) / TL;
  const int64_t T = images * g.G * tiles;
  const bool par = T >= at::get_num_threads() && T > 1;
  const int64_t P = par ? at::get_num_threads() : 1;
  std::vector<acc_t> part(P * g.Co * g.K, acc_t(0));
  auto task = [&](int64_t t, int64_t slot) {
    thread_local std::vector<acc_t> buf, dbuf;
    buf.resize(g.K * TL);
    const int64_t n = t / (g.G * tiles), gi = (t / tiles) % g.G, p0 = (t % tiles) * TL;
    const int64_t tl = std::min(TL, pixels - p0);
    at::Tensor dw = mat(part.data() + (slot * g.Co + gi * g.Cog) * g.K, g.Cog, g.K, g.K);
    if (!g.xcl) {
      const at::Tensor d = mat(dzp + (n * g.Co + gi * g.Cog) * g.L + p0, g.Cog, tl, g.L);
      im2col_nchw(g, x + (n * g.C + gi * g.Cg) * g.H * g.W, p0, tl, buf.data());
      dw.addmm_(d, mat(buf.data(), g.K, tl, tl).t());  // (Cog x tl) @ (tl x K)
      return;
    }
    // batch-wide tile: dz rows p0..p0+tl of all images, as a (Cog x tl) matrix
    at::Tensor d;
    if (g.cl) {
      d = mat(dzp + p0 * g.Co + gi * g.Cog, tl, g.Cog, g.Co).t();  // NHWC rows are contiguous across images
    } else {  // NCHW dz: gather the tile (it may span images) into a dense (Cog x tl) buffer
      dbuf.resize(g.Cog * tl);
      for (int64_t co = 0; co < g.Cog; ++co)
        for (int64_t p = p0; p < p0 + tl;) {
          const int64_t img = p / g.L, end = std::min(p0 + tl, (img + 1) * g.L);
          const acc_t* src = dzp + (img * g.Co + gi * g.Cog + co) * g.L + (p - img * g.L);
          std::copy(src, src + (end - p), dbuf.data() + co * tl + (p - p0));
          p = end;
        }
      d = mat(dbuf.data(), g.Cog, tl, tl);
    }
    im2col_nhwc(g, x + gi * g.Cg, p0, tl, buf.data());
    dw.addmm_(d, mat(buf.data(), tl, g.K, g.K));  // (Cog x tl) @ (tl x K')
  };
  if (par) {
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      const int64_t slot = at::get_thread_num();
      for (int64_t t = t0; t < t1; ++t) task(t, slot);
    });
  } else {
    for (int64_t t = 0; t < T; ++t) task(t, 0);
  }
  acc_t* out = gw_acc.data_ptr<acc_t>();
  const int64_t M = g.Co * g.K;
  at::parallel_for(0, M, 1 << 12, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      acc_t s = 0;
      for (int64_t p = 0; p < P; ++p) s += part[p * M + i];  // in slot order: deterministic
      out[i] = s;
    }
  });
}

template <typename scalar_t>
void backward_input(const Geom& g, const at::Tensor& w_acc, const at::Tensor& dz, scalar_t* dx) {
  // One task per (n, g) image: it owns that slice of dx, so overlapping col2im writes never race.
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* dzp = dz.data_ptr<acc_t>();
  const acc_t* wp = w_acc.data_ptr<acc_t>();
  const int64_t TL = pick_tile(g, sizeof(acc_t), g.N * g.G, g.L);
  const int64_t tiles = (g.L + TL - 1) / TL;
  for_tasks(g.N * g.G, [&](int64_t t) {
    thread_local std::vector<acc_t> buf, img;
    buf.resize(g.K * TL);
    img.assign(g.Cg * g.H * g.W, acc_t(0));  // this group's dx in acc_t, dense (NCHW: Cg,H,W / NHWC: H,W,Cg)
    const int64_t n = t / g.G, gi = t % g.G;
    const at::Tensor wg = mat(wp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t p0 = tile * TL, tl = std::min(TL, g.L - p0);
      const at::Tensor d = g.cl ? mat(dzp + (n * g.L + p0) * g.Co + gi * g.Cog, tl, g.Cog, g.Co).t()
                                : mat(dzp + (n * g.Co + gi * g.Cog) * g.L + p0, g.Cog, tl, g.L);  // (Cog x tl)
      if (!g.xcl) {
        at::Tensor cols = mat(buf.data(), g.K, tl, tl);
        at::mm_out(cols, wg.t(), d);  // (K x Cog) @ (Cog x tl)
        col2im_nchw(g, buf.data(), p0, tl, img.data());
      } else {
        at::Tensor rows = mat(buf.data(), tl, g.K, g.K);
        at::mm_out(rows, d.t(), wg);  // (tl x Cog) @ (Cog x K')
        col2im_nhwc(g, buf.data(), p0, tl, img.data());
      }
    }
    // write out (with the cast for fp16/bf16)
    const int64_t HW = g.H * g.W;
    if (!g.xcl) {
      scalar_t* dst = dx + (n * g.C + gi * g.Cg) * HW;
      for (int64_t i = 0; i < g.Cg * HW; ++i) dst[i] = scalar_t(img[i]);
    } else if (!g.cl) {  // (H, W, Cg) scratch -> NCHW planes: a transpose, from L2
      scalar_t* dst = dx + (n * g.C + gi * g.Cg) * HW;
      for (int64_t c = 0; c < g.Cg; ++c)
        for (int64_t p = 0; p < HW; ++p) dst[c * HW + p] = scalar_t(img[p * g.Cg + c]);
    } else {
      for (int64_t p = 0; p < HW; ++p) {
        scalar_t* dst = dx + (n * HW + p) * g.C + gi * g.Cg;
        const acc_t* src = img.data() + p * g.Cg;
        for (int64_t c = 0; c < g.Cg; ++c) dst[c] = scalar_t(src[c]);
      }
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
      std::vector<acc_t> dzw(flat ? g.Ho * Wp : 0, acc_t(0));
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
            std::fill(dxpad.begin(), dxpad.end(), acc_t(0));
            const int64_t nq = g.Ho * Wp;
            const acc_t* __restrict__ dq = dzw.data();
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& w, const c10::optional<at::Tensor>& z_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view act_name, double leak, double sub, double maxv, std::array<bool, 3> mask) {
  check_conv2d_args(x_in, w, c10::nullopt, stride, padding, dilation, groups, c10::DeviceType::CPU,
                    "conv2d_backward");
  const Act<double> act = make_act(std::string(act_name), leak, sub, maxv);
  check_conv2d_backward_args(grad_y, z_in, x_in, conv2d_out_shape(x_in, w, stride, padding, dilation),
                             act.kind != kActNone);
  if (x_in.size(1) == 0) {  // no input channel: the output was empty and constant, every gradient is zero
    const at::Tensor none = at::empty({0}, x_in.options());
    return {mask[0] ? at::zeros_like(x_in) : none, mask[1] ? at::zeros_like(w) : none,
            mask[2] ? at::zeros({w.size(0)}, x_in.options()) : none};
  }
  Geom g = make_geom(x_in, w, stride, padding, dilation, groups);
  const auto fmt = g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(g.xcl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const at::Tensor dy = grad_y.contiguous(fmt);
  const at::Tensor zs = act.kind == kActNone ? at::Tensor() : z_in->contiguous(fmt);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gx = mask[0] ? at::empty(x.sizes(), x.options().memory_format(fmt)) : at::empty({0}, x.options());
  at::Tensor gw = at::empty({0}, x.options()), gb = at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor gb_acc;
    const at::Tensor dz = make_dz<scalar_t>(g, dy, zs, act, mask[2] ? &gb_acc : nullptr);
    if (mask[2]) gb = gb_acc.to(x.scalar_type());
    if (g.Cg == 1 && g.Cog == 1) {  // depthwise: direct loops, both gradients in one pass
      at::Tensor gw_acc = at::zeros({g.Co, g.K}, x.options().dtype(acc_type));
      if (g.N * g.L > 0 && (mask[0] || mask[1])) {
        const at::Tensor w_acc = (g.cl ? w.reshape({g.Co, g.K}).t() : w.reshape({g.Co, g.K})).to(acc_type).contiguous();
        depthwise_backward<scalar_t>(g, x.data_ptr<scalar_t>(), w_acc, dz, mask[0] ? gx.data_ptr<scalar_t>() : nullptr,
                                     mask[1] ? &gw_acc : nullptr);
      }
      if (mask[1]) gw = gw_acc.view(w.sizes()).to(w.scalar_type());
      return;
    }
    if (mask[1]) {
      at::Tensor gw_acc = at::empty({g.Co, g.K}, x.options().dtype(acc_type));
      if (g.N * g.L == 0) gw_acc.zero_();
      else backward_weight<scalar_t>(g, x.data_ptr<scalar_t>(), dz, gw_acc);
      gw = g.xcl ? gw_acc.view({g.Co, g.kh, g.kw, g.Cg}).permute({0, 3, 1, 2}) : gw_acc.view(w.sizes());
      gw = gw.to(w.scalar_type()).contiguous();
    }
    if (mask[0] && gx.numel() > 0 && winograd::use_backward_input(x, w, stride, padding, dilation, groups)) {
      winograd::backward_input(dz, w, g.ph, g.pw, g.cl, gx);
    } else if (mask[0] && gx.numel() > 0) {
      const at::Tensor w_acc = (g.xcl ? w.permute({0, 2, 3, 1}) : w).to(acc_type).contiguous();
      backward_input<scalar_t>(g, w_acc, dz, gx.data_ptr<scalar_t>());
    }
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) {
  m.def("conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "str act, float leak, float sub, float maxv, bool save_preact) -> (Tensor, Tensor)");
  m.def("conv2d_backward(Tensor grad_y, Tensor x, Tensor w, Tensor? z, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, str act, float leak, float sub, float maxv, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pydl_cpu, CPU, m) {
  m.impl("conv2d", &pydl::conv2d_cpu);
  m.impl("conv2d_backward", &pydl::conv2d_backward_cpu);
}
