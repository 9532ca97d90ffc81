// conv2d on the CPU, part: the im2col + GEMM paths -- forward with its fused epilogue, grad weight and grad
// input (csrc/cpu/conv2d.cpp's top comment describes the tiling and why).
#include <cstdlib>
#include <vector>

#include "conv2d_internal.h"
#include "epilogue.h"

namespace pydl {
namespace conv_cpu {

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

#define PYDL_INSTANTIATE(T)                                                                                     \
  template void gemm_forward(const Geom&, const T*, const at::Tensor&, const at::Tensor&,                      \
                             const Act<at::opmath_type<T>>&, T*, T*);                                          \
  template void backward_weight(const Geom&, const T*, const at::Tensor&, at::Tensor&);                        \
  template void backward_input(const Geom&, const at::Tensor&, const at::Tensor&, T*);
PYDL_CONV_DTYPES(PYDL_INSTANTIATE)
#undef PYDL_INSTANTIATE

}  // namespace conv_cpu
}  // namespace pydl
