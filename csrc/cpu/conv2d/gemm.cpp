// conv2d on the CPU, part: the im2col + GEMM paths -- forward with its fused epilogue, grad weight and grad
// input (csrc/cpu/conv2d.cpp's top comment describes the tiling and why).
#include <cstdlib>
#include <memory>
#include <string>
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
  tl = std::max<int64_t>(1, tl);
  // Even tiles: 3136 pixels in tiles of 1024 leave a last one of 64, a GEMM far below peak (and a straggler
  // task). The same tile count with equal tiles: 4 x 784.
  {
    const int64_t tiles = (pixels + tl - 1) / tl;
    int64_t t2 = (pixels + tiles - 1) / tiles;
    if (t2 >= 16) t2 += (16 - t2 % 16) % 16;
    if (t2 <= tl && (pixels + t2 - 1) / t2 == tiles) tl = t2;
  }
  // A task count that is not a multiple of the threads leaves threads idle at the end: with 2 threads and
  // 5 equal tasks the run lasts 3 tasks, 20% longer than 2.5. While there are few tasks per thread (where
  // that tail matters), take a few more, slightly narrower tiles so that the count divides evenly.
  const int64_t T = tasks_outside * ((pixels + tl - 1) / tl);
  if (threads > 1 && T % threads != 0 && T < 8 * threads) {
    for (int64_t tiles = (pixels + tl - 1) / tl + 1; tiles <= 2 * ((pixels + tl - 1) / tl); ++tiles) {
      if ((tasks_outside * tiles) % threads != 0) continue;
      int64_t t2 = (pixels + tiles - 1) / tiles;
      if (t2 >= 16) t2 += (16 - t2 % 16) % 16;
      if ((pixels + t2 - 1) / t2 == tiles && t2 >= 64) tl = t2;
      break;
    }
  }
  return tl;
}

namespace {

// 1x1, stride 1, no padding: the im2col matrix is the input itself and col2im is the identity.
bool is_pointwise(const Geom& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

// The whole-batch scheme (NHWC im2col only): im2col of ALL the batch's output pixels into one (N*L x K)
// matrix, then ONE GEMM per group that MKL threads itself, instead of tiles run as parallel tasks with a
// single-threaded GEMM each. Tiles win when there are many of them (the im2col buffer stays in L2, each
// thread runs a big GEMM); but late-ResNet layers at a small batch (256@14 at N=2: 392 pixels, K=2304)
// give only a few narrow tiles: each task's GEMM re-packs the whole weight for a thin B, and with 3 tasks
// on 2 threads one thread idles a third of the time. There, one wide GEMM wins -- as long as its buffers
// (the im2col matrix and the GEMM's output) are small enough to stay cheap: <= 16 MB.
// PYDL_CONV_WHOLE=0|1 forces it off or on (the doctor lists the knob); unset: this rule.
bool use_whole(const Geom& g, int64_t tasks, int64_t tl, int64_t acc_bytes) {
  static const int force = [] {
    const char* s = std::getenv("PYDL_CONV_WHOLE");
    if (s != nullptr && std::string(s) == "0") return 0;
    if (s != nullptr && std::string(s) == "1") return 1;
    return -1;
  }();
  if (!g.xcl) return false;
  if (force >= 0) return force == 1;
  const int64_t bytes = g.N * g.L * (g.K + g.Cog) * acc_bytes;
  return (tasks < 4 * at::get_num_threads() || tl < 128) && bytes <= (int64_t(16) << 20);
}

// A scratch buffer owned by the calling thread and kept across calls: the whole-batch buffers are a few MB,
// and a fresh allocation that size is an mmap whose every page faults in on first touch (about as long as
// the im2col itself). Bounded: use_whole caps what it asks for at 16 MB; anything larger is freed after use.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t>& v;
  explicit Scratch(std::vector<acc_t>& v_, int64_t n) : v(v_) { v.resize(n); }
  ~Scratch() {
    if (v.size() * sizeof(acc_t) > (size_t(16) << 20)) std::vector<acc_t>().swap(v);
  }
  acc_t* data() { return v.data(); }
};

// im2col (NHWC) of the batch's pixels [0, N*L) for group gi into buf (N*L x K), in parallel over pixels.
template <typename scalar_t, typename acc_t>
void im2col_whole(const Geom& g, const scalar_t* x, int64_t gi, acc_t* buf) {
  at::parallel_for(0, g.N * g.L, 64, [&](int64_t p0, int64_t p1) {
    im2col_nhwc(g, x + gi * g.Cg, p0, p1 - p0, buf + p0 * g.K);
  });
}

}  // namespace

// The whole-batch forward (see use_whole): per group, im2col of every pixel, one threaded GEMM, then the
// epilogue in parallel over pixels (channels_last out) or channels (NCHW out).
template <typename scalar_t, typename acc_t>
void gemm_forward_whole(const Geom& g, const scalar_t* x, const at::Tensor& w_acc, const acc_t* bp,
                        const Act<acc_t>& act, scalar_t* y, scalar_t* z) {
  thread_local std::vector<acc_t> cols_v, out_v;
  const int64_t P = g.N * g.L;
  const bool direct = is_pointwise(g) && std::is_same<scalar_t, acc_t>::value;
  Scratch<acc_t> cols(cols_v, direct ? 0 : P * g.K);
  // channels_last, one group, output in acc_t: the GEMM writes y itself, and the epilogue runs in place.
  const bool into_y = g.cl && g.G == 1 && std::is_same<scalar_t, acc_t>::value;
  Scratch<acc_t> out(out_v, into_y ? 0 : P * g.Cog);
  const acc_t* wp = w_acc.data_ptr<acc_t>();
  with_act(act.kind, [&](auto kind_c) {
    constexpr int KIND = decltype(kind_c)::value;
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const at::Tensor wg = mat(wp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
      at::Tensor rows;
      if (direct) {
        rows = mat(reinterpret_cast<const acc_t*>(x) + gi * g.Cg, P, g.K, g.C);
      } else {
        im2col_whole(g, x, gi, cols.data());
        rows = mat(cols.data(), P, g.K, g.K);
      }
      if (g.cl) {
        acc_t* o = into_y ? reinterpret_cast<acc_t*>(y) : out.data();
        at::Tensor om = mat(o, P, g.Cog, into_y ? g.Co : g.Cog);
        at::mm_out(om, rows, wg.t());  // (P x K) @ (K x Cog): NHWC rows of the output
        const int64_t ld = into_y ? g.Co : g.Cog;
        at::parallel_for(0, P, 64, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t dst = p * g.Co + gi * g.Cog;
            if (into_y) {  // in place: y is both the GEMM's output and the epilogue's
              epilogue_row_inplace<KIND>(reinterpret_cast<acc_t*>(y) + dst, g.Cog, bp + gi * g.Cog, act,
                                         z ? reinterpret_cast<acc_t*>(z) + dst : nullptr);
            } else {
              epilogue_row<KIND>(o + p * ld, g.Cog, bp + gi * g.Cog, act, y + dst, z ? z + dst : nullptr);
            }
          }
        });
      } else {  // NCHW output: (Cog x K) @ (K x P) gives a row of every image per channel
        at::Tensor om = mat(out.data(), g.Cog, P, P);
        at::mm_out(om, wg, rows.t());
        at::parallel_for(0, g.Cog * g.N, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t co = t / g.N, n = t % g.N, c = gi * g.Cog + co;
            const int64_t dst = (n * g.Co + c) * g.L;
            epilogue_run<KIND>(out.data() + co * P + n * g.L, g.L, bp[c], act, y + dst, z ? z + dst : nullptr);
          }
        });
      }
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
  // With no im2col buffer (direct, NCHW) there is nothing to keep in L2 but the output block: one GEMM per
  // whole image runs nearer MKL's peak than 4 tiles of it (64x256 @ 256x3136: 0.95 ms vs 1.05 ms, 1 thread),
  // when the images alone split evenly over the threads.
  const int64_t threads = at::get_num_threads();
  const bool per_image = direct && !g.xcl && (images * g.G) % threads == 0;
  const int64_t TL = per_image ? pixels : pick_tile(g, sizeof(acc_t), images * g.G, pixels);
  const int64_t tiles = (pixels + TL - 1) / TL;
  const int64_t T = images * g.G * tiles;
  if (use_whole(g, T, TL, sizeof(acc_t))) {
    gemm_forward_whole(g, x, w_acc, bp, act, y, z);
    return;
  }
  with_act(act.kind, [&](auto kind_c) {
    constexpr int KIND = decltype(kind_c)::value;
    for_tasks(T, [&](int64_t t) {
      // thread-local scratch, reused across this thread's tasks
      thread_local std::vector<acc_t> buf, out;
      buf.resize(direct ? 0 : g.K * TL);
      out.resize(g.xcl || !std::is_same<scalar_t, acc_t>::value ? g.Cog * TL : 0);
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
        if (std::is_same<scalar_t, acc_t>::value) {
          // the GEMM writes its (Cog x tl) block of y in place (rows L apart), and the epilogue runs on it
          // while it is in cache: no scratch output to write and read back
          acc_t* yo = reinterpret_cast<acc_t*>(y) + (n * g.Co + gi * g.Cog) * g.L + p0;
          at::Tensor o = mat(yo, g.Cog, tl, g.L);
          at::mm_out(o, wg, cols);  // (Cog x K) @ (K x tl)
          for (int64_t co = 0; co < g.Cog; ++co)
            epilogue_run_inplace<KIND>(yo + co * g.L, tl, bp[gi * g.Cog + co], act,
                                       z ? reinterpret_cast<acc_t*>(z) + (yo - reinterpret_cast<acc_t*>(y)) + co * g.L
                                         : nullptr);
        } else {
          at::Tensor o = mat(out.data(), g.Cog, tl, tl);
          at::mm_out(o, wg, cols);  // (Cog x K) @ (K x tl)
          for (int64_t co = 0; co < g.Cog; ++co) {
            const int64_t c = gi * g.Cog + co;
            const int64_t dst = (n * g.Co + c) * g.L + p0;
            epilogue_run<KIND>(out.data() + co * tl, tl, bp[c], act, y + dst, z ? z + dst : nullptr);
          }
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
  acc_t* gwp = gw_acc.data_ptr<acc_t>();
  constexpr bool same = std::is_same<scalar_t, acc_t>::value;
  // 1x1 stride 1 NCHW: grad_w[g] = sum over images of dz_n (Cog x L) @ x_n^T (L x Cg), read in place --
  // no im2col, no partials; each GEMM is threaded by MKL.
  if (is_pointwise(g) && !g.xcl && same) {
    const acc_t* xp = reinterpret_cast<const acc_t*>(x);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      at::Tensor dw = mat(gwp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
      for (int64_t n = 0; n < g.N; ++n) {
        const at::Tensor d = mat(dzp + (n * g.Co + gi * g.Cog) * g.L, g.Cog, g.L, g.L);
        const at::Tensor xn = mat(xp + (n * g.C + gi * g.Cg) * g.L, g.Cg, g.L, g.L);
        if (n == 0) at::mm_out(dw, d, xn.t());
        else dw.addmm_(d, xn.t());
      }
    }
    return;
  }
  const int64_t pixels = g.xcl ? g.N * g.L : g.L;
  const int64_t images = g.xcl ? 1 : g.N;
  int64_t TL = std::min(pixels, std::max<int64_t>(512, pick_tile(g, sizeof(acc_t), images * g.G, pixels)));
  const int64_t tiles = (pixels + TL - 1) / TL;
  const int64_t T = images * g.G * tiles;
  if (use_whole(g, T, TL, sizeof(acc_t))) {
    // Whole batch: grad_w[g] = dz^T (Cog x N*L) @ im2col (N*L x K), one GEMM straight into grad_w (one per
    // image for an NCHW dz, whose images are not one matrix). 1x1 stride 1 channels_last: x is the im2col.
    thread_local std::vector<acc_t> cols_v;
    const bool direct = is_pointwise(g) && same;
    Scratch<acc_t> cols(cols_v, direct ? 0 : g.N * g.L * g.K);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const acc_t* r = reinterpret_cast<const acc_t*>(x) + gi * g.Cg;
      int64_t ldr = g.C;
      if (!direct) {
        im2col_whole(g, x, gi, cols.data());
        r = cols.data();
        ldr = g.K;
      }
      at::Tensor dw = mat(gwp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
      if (g.cl) {
        at::mm_out(dw, mat(dzp + gi * g.Cog, g.N * g.L, g.Cog, g.Co).t(), mat(r, g.N * g.L, g.K, ldr));
      } else {
        for (int64_t n = 0; n < g.N; ++n) {
          const at::Tensor d = mat(dzp + (n * g.Co + gi * g.Cog) * g.L, g.Cog, g.L, g.L);
          const at::Tensor rn = mat(r + n * g.L * ldr, g.L, g.K, ldr);
          if (n == 0) at::mm_out(dw, d, rn);
          else dw.addmm_(d, rn);
        }
      }
    }
    return;
  }
  const bool par = T >= at::get_num_threads() && T > 1;
  const int64_t P = par ? at::get_num_threads() : 1;
  // Per-thread partials, in each thread's own scratch that persists across calls (a fresh multi-MB buffer per
  // call would fault in every page). A slot's first task for a group writes its partial with mm_out, later
  // ones add: no zeroing pass. A slot that never ran a task of a group contributes nothing to the sum.
  // Bounded: partials above 8 MB (512 channels x 3x3 is 9.4 MB) live in a per-call buffer instead, so a
  // big layer does not pin ~19 MB (two threads) for the rest of the process.
  std::vector<acc_t*> part(P, nullptr);
  std::vector<char> touched(P * g.G, 0);
  const size_t part_n = size_t(g.Co) * g.K;
  const bool keep = part_n * sizeof(acc_t) <= (size_t(8) << 20);
  std::unique_ptr<acc_t[]> big(keep ? nullptr : new acc_t[P * part_n]);  // uninitialised: written by mm_out
  auto task = [&](int64_t t, int64_t slot) {
    thread_local std::vector<acc_t> buf, dbuf, pbuf;
    if (part[slot] == nullptr) {
      if (keep) pbuf.resize(part_n);
      part[slot] = keep ? pbuf.data() : big.get() + slot * part_n;
    }
    buf.resize(g.K * TL);
    const int64_t n = t / (g.G * tiles), gi = (t / tiles) % g.G, p0 = (t % tiles) * TL;
    const int64_t tl = std::min(TL, pixels - p0);
    at::Tensor dw = mat(part[slot] + gi * g.Cog * g.K, g.Cog, g.K, g.K);
    const bool first = !touched[slot * g.G + gi];
    touched[slot * g.G + gi] = 1;
    auto acc = [&](const at::Tensor& a, const at::Tensor& b) {
      if (first) at::mm_out(dw, a, b);
      else dw.addmm_(a, b);
    };
    if (!g.xcl) {
      const at::Tensor d = mat(dzp + (n * g.Co + gi * g.Cog) * g.L + p0, g.Cog, tl, g.L);
      im2col_nchw(g, x + (n * g.C + gi * g.Cg) * g.H * g.W, p0, tl, buf.data());
      acc(d, mat(buf.data(), g.K, tl, tl).t());  // (Cog x tl) @ (tl x K)
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
    acc(d, mat(buf.data(), tl, g.K, g.K));  // (Cog x tl) @ (tl x K')
  };
  if (par) {
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      const int64_t slot = at::get_thread_num();
      for (int64_t t = t0; t < t1; ++t) task(t, slot);
    });
  } else {
    for (int64_t t = 0; t < T; ++t) task(t, 0);
  }
  at::parallel_for(0, g.Co, std::max<int64_t>(1, (1 << 12) / g.K), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t gi = c / g.Cog;
      acc_t* __restrict__ o = gwp + c * g.K;
      bool any = false;
      for (int64_t p = 0; p < P; ++p) {  // in slot order: deterministic
        if (!touched[p * g.G + gi]) continue;
        const acc_t* __restrict__ src = part[p] + c * g.K;
        if (!any) std::copy(src, src + g.K, o);
        else
          for (int64_t k = 0; k < g.K; ++k) o[k] += src[k];
        any = true;
      }
      if (!any) std::fill(o, o + g.K, acc_t(0));
    }
  });
}
// Write one (n, group) image of grad_x from the dense acc_t scratch col2im summed it in (NCHW: Cg,H,W / NHWC:
// H,W,Cg), with the cast for fp16/bf16.
template <typename scalar_t, typename acc_t>
void write_dx(const Geom& g, const acc_t* img, int64_t n, int64_t gi, scalar_t* dx) {
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
      const acc_t* src = img + p * g.Cg;
      for (int64_t c = 0; c < g.Cg; ++c) dst[c] = scalar_t(src[c]);
    }
  }
}

template <typename scalar_t>
void backward_input(const Geom& g, const at::Tensor& w_acc, const at::Tensor& dz, scalar_t* dx) {
  // One task per (n, g) image: it owns that slice of dx, so overlapping col2im writes never race.
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* dzp = dz.data_ptr<acc_t>();
  const acc_t* wp = w_acc.data_ptr<acc_t>();
  // 1x1 stride 1, grad_x in acc_t: col2im is the identity, so each GEMM writes grad_x in place --
  // NCHW: dx_n[g] (Cg x L) = W_g^T @ dz_n[g]; channels_last: dx[:, g] (N*L x Cg) = dz[:, g] @ W_g.
  if (is_pointwise(g) && std::is_same<scalar_t, acc_t>::value && (g.cl || !g.xcl)) {
    acc_t* dxp = reinterpret_cast<acc_t*>(dx);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const at::Tensor wg = mat(wp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
      if (g.cl) {
        at::Tensor o = mat(dxp + gi * g.Cg, g.N * g.L, g.Cg, g.C);
        at::mm_out(o, mat(dzp + gi * g.Cog, g.N * g.L, g.Cog, g.Co), wg);
      } else {
        for (int64_t n = 0; n < g.N; ++n) {
          at::Tensor o = mat(dxp + (n * g.C + gi * g.Cg) * g.L, g.Cg, g.L, g.L);
          at::mm_out(o, wg.t(), mat(dzp + (n * g.Co + gi * g.Cog) * g.L, g.Cog, g.L, g.L));
        }
      }
    }
    return;
  }
  const int64_t TL = pick_tile(g, sizeof(acc_t), g.N * g.G, g.L);
  const int64_t tiles = (g.L + TL - 1) / TL;
  // grad_x's tasks are whole (n, g) images, each GEMM single-threaded: when they split evenly over the
  // threads that beats one threaded GEMM + col2im (256@14, N=2, 2 threads: ~1.95 vs ~2.1+ ms). So the
  // whole batch only when they do not (N=1, odd N at 2 threads) -- or when PYDL_CONV_WHOLE forces it.
  const int64_t threads = at::get_num_threads();
  const bool uneven = (g.N * g.G) % threads != 0 && g.N * g.G < 4 * threads;
  if (use_whole(g, uneven ? 0 : 4 * threads, 128, sizeof(acc_t))) {
    // Whole batch: cols (N*L x K) = dz (N*L x Cog) @ W_g, one threaded GEMM (one per image for an NCHW dz),
    // then col2im per image, in parallel over images.
    thread_local std::vector<acc_t> cols_v;
    Scratch<acc_t> cols(cols_v, g.N * g.L * g.K);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const at::Tensor wg = mat(wp + gi * g.Cog * g.K, g.Cog, g.K, g.K);
      if (g.cl) {
        at::Tensor o = mat(cols.data(), g.N * g.L, g.K, g.K);
        at::mm_out(o, mat(dzp + gi * g.Cog, g.N * g.L, g.Cog, g.Co), wg);
      } else {
        for (int64_t n = 0; n < g.N; ++n) {
          at::Tensor o = mat(cols.data() + n * g.L * g.K, g.L, g.K, g.K);
          at::mm_out(o, mat(dzp + (n * g.Co + gi * g.Cog) * g.L, g.Cog, g.L, g.L).t(), wg);
        }
      }
      for_tasks(g.N, [&](int64_t n) {
        thread_local std::vector<acc_t> img;
        img.assign(g.Cg * g.H * g.W, acc_t(0));
        col2im_nhwc(g, cols.data() + n * g.L * g.K, 0, g.L, img.data());
        write_dx(g, img.data(), n, gi, dx);
      });
    }
    return;
  }
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
    write_dx(g, img.data(), n, gi, dx);
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
