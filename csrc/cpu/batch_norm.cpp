// batch_norm on the CPU: training/eval forward, running-stat update, backward, and the separable steps
// (stats, apply, backward_reduce, backward_elemt) that a SyncBatchNorm would all-reduce between.
// Contract and math: pydl/ops/batch_norm.py.
//
// Two memory layouts, never a transposing copy:
//   NCL -- contiguous (N, C, L), L = prod(spatial): channel c is N planes of L contiguous values.
//   NLC -- channels last (and 2-D (N, C)): a (rows = N*L, C) matrix, channel fastest.
//
// Where the time goes. Batch norm is memory-bound: a training forward must read x twice (statistics, then
// normalise) and write y; a backward reads (dy, x) twice (two sums, then dx) and writes dx. The one trick
// that beats "twice from memory" is *channel blocking* for NCL: one thread takes a whole channel, computes
// its statistics, and normalises it right away, while the channel (N*L values: 256 KB for 64x1024 fp32) is
// still in its L2 cache. The second read then costs an L2 hit, not a trip to memory. The same for the
// backward: the two sums of a channel, then its dx. NLC cannot do that (a channel is spread over every
// row), so it runs the two passes over all rows, each vectorised across channels.
//
// Numerics: statistics are per-chunk two-pass (sum, then squared deviations from the chunk's own mean,
// both over an L1-resident chunk, in the accumulation type) merged across chunks with Chan's formula in
// double -- no sum-of-squares cancellation. Backward sums: per-chunk fp32 partial sums, added in double.
//
// Vectorisation without -ffast-math: `#pragma omp simd reduction(+: ...)` allows reordering exactly those
// float sums (each SIMD lane keeps a partial sum). The activation's branches are selects on a compile-time
// activation kind (template parameter), so the loops stay branch-free.
//
// Why one long file: seven ops share the per-channel statistics, the layout walks and the gradient
// constants; next split if it grows: the separable SyncBatchNorm steps to csrc/cpu/batch_norm/.
#include <torch/library.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/OpMathType.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "activation.h"
#include "common.h"
#include "moments.h"
#include "schemas.h"

namespace pydl {
namespace {

constexpr int64_t kChunk = 4096;         // values per L1-resident chunk (16 KB of fp32)
constexpr int64_t kTaskElems = 1 << 15;  // values per parallel task, at least: amortises the task's cost
constexpr const char* kOp = "batch_norm";

// ---------------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------------

struct Geometry {
  int64_t N = 0, C = 0, L = 1;
  bool cl = false;  // NLC
  int64_t count() const { return N * L; }
};

// (N, spatial..., C) dense, with the channel fastest; 2-D (N, C) is rows of channels already. Read from the
// strides, in the order C, last spatial, ..., first spatial, N, without building a permuted view. A size-1
// dim's stride says nothing (torch gives such dims whatever stride), so it is skipped, as is_contiguous
// does: a (N, C, H, 1) or (N, C, 1, W) tensor is classified by the order of its other strides alone.
bool is_channels_last(const at::Tensor& x) {
  if (x.dim() == 2) return x.is_contiguous();
  if (x.dim() < 3 || x.is_contiguous()) return false;  // both layouts fit: read it as contiguous
  const auto sizes = x.sizes();
  const auto strides = x.strides();
  int64_t expected = 1;
  auto fits = [&](int64_t d) {
    if (sizes[d] == 1) return true;
    if (strides[d] != expected) return false;
    expected *= sizes[d];
    return true;
  };
  if (!fits(1)) return false;
  for (int64_t d = x.dim() - 1; d >= 2; --d)
    if (!fits(d)) return false;
  return fits(0);
}

// x itself if contiguous or channels last, else a contiguous copy; the geometry to index it with.
at::Tensor dense(const at::Tensor& x, Geometry& g) {
  const bool cl = is_channels_last(x);
  at::Tensor d = (cl || x.is_contiguous()) ? x : x.contiguous();
  g.N = d.size(0);
  g.C = d.size(1);
  g.L = 1;
  for (int64_t i = 2; i < d.dim(); ++i) g.L *= d.size(i);
  g.cl = cl;
  return d;
}

void check_x(const at::Tensor& x, const char* name) {
  check_device(x, c10::DeviceType::CPU, kOp, name);
  check_floating(x, kOp, name);
  PYDL_CHECK_VALUE(x.dim() >= 2, kOp, ": ", name, " must have shape (N, C, ...) with rank >= 2, got rank ",
                   x.dim());
}

void check_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return;
  PYDL_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(1), kOp, ": ", name, " must have shape (", x.size(1),
                   ",) (one value per channel of x), got ", t->sizes());
  PYDL_CHECK_VALUE(t->device() == x.device(), kOp, ": ", name, " is on ", t->device(), " but x is on ", x.device());
  const bool mixed = (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) &&
                     t->scalar_type() == at::kFloat;
  PYDL_CHECK_TYPE(t->scalar_type() == x.scalar_type() || mixed, kOp, ": ", name, " has dtype ", t->scalar_type(),
                  " but x is ", x.scalar_type(), "; ", name, " must have x's dtype (or float32 for float16/bfloat16 x)");
}

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_stat(const at::Tensor& t, const char* name, const at::Tensor& x) {
  PYDL_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(1) && t.device() == x.device() &&
                       t.scalar_type() == acc_type(x),
                   kOp, ": ", name, " must be a (", x.size(1), ",) ", acc_type(x), " tensor on ", x.device(), ", got ",
                   t.sizes(), " ", t.scalar_type(), " on ", t.device());
}

int act_kind(const std::string& act, double leak, double sub, double maxv) {
  int kind = act == "none" ? kActNone : act == "relu" ? kActRelu : act == "general_relu" ? kActGeneralRelu : -1;
  PYDL_CHECK_VALUE(kind >= 0, kOp, ": act must be one of ('none', 'relu', 'general_relu'), got '", act, "'");
  PYDL_CHECK_VALUE(kind != kActGeneralRelu || (leak >= 0 && std::isfinite(sub) && !std::isnan(maxv)), kOp,
                   ": general_relu needs leak >= 0, finite sub and a maxv, got leak=", leak, ", sub=", sub,
                   ", maxv=", maxv);
  return kind;
}

// Run f with the activation kind as a compile-time constant: the branches of Act::forward/backward fold away
// and the loops that call them stay vectorisable.
template <typename F>
void dispatch_act(int kind, F&& f) {
  switch (kind) {
    case kActRelu: f(std::integral_constant<int, kActRelu>{}); break;
    case kActGeneralRelu: f(std::integral_constant<int, kActGeneralRelu>{}); break;
    default: f(std::integral_constant<int, kActNone>{}); break;
  }
}

// A per-channel tensor (optional) as a vector in the accumulation type; `dflt` where absent. Already in the
// accumulation type (the common case: fp32 parameters of fp32/fp16/bf16 x), it is read in place, at its
// stride: a to()/contiguous() is a dispatcher round trip each, which on a small input costs more than the
// normalisation itself.
template <typename acc_t>
std::vector<acc_t> per_channel(const std::optional<at::Tensor>& t, int64_t C, acc_t dflt) {
  std::vector<acc_t> out(C, dflt);
  if (!t.has_value() || !t->defined()) return out;
  if (t->scalar_type() == c10::CppTypeToScalarType<acc_t>::value) {
    const acc_t* p = t->const_data_ptr<acc_t>();
    const int64_t s = t->stride(0);
    for (int64_t c = 0; c < C; ++c) out[c] = p[c * s];
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t->scalar_type(), "pydl_bn_per_channel", [&] {
    const scalar_t* p = t->const_data_ptr<scalar_t>();
    const int64_t s = t->stride(0);
    for (int64_t c = 0; c < C; ++c) out[c] = acc_t(p[c * s]);
  });
  return out;
}

// Per-channel outputs (mean, invstd, var: C values each) come from plain malloc, not from torch's CPU
// allocator. Why: torch's allocator is posix_memalign(64), and glibc (2.36) serves memalign from its bins,
// never from the per-thread cache (tcache). Three such requests a call keep taking small chunks out of the
// bins -- when none fits, out of the large free chunk the previous call's y left behind. Then the next y no
// longer fits there, the heap grows by a fresh y (page-faulted in: 1024 faults, ~1 ms instead of ~0.35 ms
// for 16x64x32x32 fp32), and later shrinks again when both are freed. Measured in 300 back-to-back eval
// module calls: 22-77 such calls with memalign, 0-14 with malloc (torch's module: 0-9). malloc'ed chunks of
// this size cycle through the tcache and leave the big chunk alone. The kernels need no 64-byte alignment
// for these (they are read element by element); the tensors are ordinary CPU tensors (resizable, freed by
// free() through the DataPtr).
struct SmallAllocator final : at::Allocator {
  static void deleter(void* p) { std::free(p); }
  at::DataPtr allocate(size_t n) override {
    void* p = n ? std::malloc(n) : nullptr;
    TORCH_CHECK(p != nullptr || n == 0, "pydl batch_norm: out of memory allocating ", n, " bytes");
    return {p, p, &deleter, at::Device(at::kCPU)};
  }
  at::DeleterFnPtr raw_deleter() const override { return &deleter; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

at::Tensor small_empty(int64_t C, at::ScalarType dtype) {
  static SmallAllocator alloc;
  return at::detail::empty_generic({C}, &alloc, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, std::nullopt);
}

// ---------------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------------

// Running (count, mean, M2) of one channel; merge() is Chan, Golub & LeVeque's pairwise formula.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double mb, double m2b) { chan_merge(n, mean, m2, nb, mb, m2b); }
};

// fp32/fp64 chunks are read in place; fp16/bf16 chunks are converted once into an L1 buffer.
template <typename scalar_t, typename acc_t>
inline const acc_t* as_acc(const scalar_t* p, int64_t len, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return p;
  } else {
    for (int64_t i = 0; i < len; ++i) buf[i] = acc_t(p[i]);
    return buf;
  }
}

// The mean of len values v[0], v[stride], ... in double, for the rare chunk whose float sums overflowed:
// float32 values sum in double without overflow (a constant chunk's mean comes out exact, so its M2 is 0);
// float64 values near their maximum are averaged pre-scaled instead.
template <typename acc_t>
double mean_no_overflow(const acc_t* v, int64_t len, int64_t stride) {
  double s = 0.0;
  if constexpr (std::is_same_v<acc_t, float>) {
    for (int64_t i = 0; i < len; ++i) s += double(v[i * stride]);
    return s / double(len);
  } else {
    const double inv = 1.0 / double(len);
    for (int64_t i = 0; i < len; ++i) s += double(v[i * stride]) * inv;
    return s;
  }
}

// Two passes over one L1-resident chunk: its sum, then squared deviations from its own mean.
template <typename acc_t>
inline void chunk_moments(const acc_t* __restrict__ v, int64_t len, Moments& m) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; ++i) s += v[i];
  const acc_t mean = s / acc_t(len);
  acc_t q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t d = v[i] - mean;
    q += d * d;
  }
  if (std::isfinite(s) && std::isfinite(q)) {
    m.merge(double(len), double(mean), double(q));
    return;
  }
  // The float sums overflowed (float32 data near 1e35 and beyond) or the data holds inf/NaN. Redo the chunk
  // in double with the mean from pre-scaled values: finite data then gets its true mean (never inf - inf =
  // NaN), float32 data its exact M2; an M2 beyond float64 is inf. Inf/NaN data still give inf/NaN, as torch.
  const double md = mean_no_overflow(v, len, 1);
  double qd = 0.0;
  for (int64_t i = 0; i < len; ++i) qd += (double(v[i]) - md) * (double(v[i]) - md);
  m.merge(double(len), md, qd);
}

// Moments of a contiguous span (part of one NCL plane).
template <typename scalar_t, typename acc_t>
inline void span_moments(const scalar_t* p, int64_t len, acc_t* buf, Moments& m) {
  for (int64_t i = 0; i < len; i += kChunk) {
    const int64_t n = std::min(kChunk, len - i);
    chunk_moments(as_acc(p + i, n, buf), n, m);
  }
}

template <int ACT, typename acc_t>
struct ActC {  // the activation with its kind fixed at compile time
  acc_t leak, sub, maxv;
  inline acc_t fwd(acc_t z) const { return Act<acc_t>{ACT, leak, sub, maxv}.forward(z); }
  inline acc_t bwd(acc_t dy, acc_t z) const { return Act<acc_t>{ACT, leak, sub, maxv}.backward(dy, z); }
};

// y = act(x * scale + shift) over a contiguous span (scale = invstd*w, shift = b - mean*scale: one FMA).
template <int ACT, typename scalar_t, typename acc_t>
inline void span_apply(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t len, acc_t scale,
                       acc_t shift, const ActC<ACT, acc_t>& a) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) y[i] = scalar_t(a.fwd(acc_t(x[i]) * scale + shift));
}

// The backward's two sums over a contiguous span: sum(dz), sum(dz * (x - mean)); dz = act'(z) * dy with z
// recomputed from x (cheaper than saving z: x is read anyway). fp32 partial sums per chunk, double across.
template <int ACT, typename scalar_t, typename acc_t>
inline void span_reduce(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, int64_t len, acc_t mean,
                        acc_t scale, acc_t shift, const ActC<ACT, acc_t>& a, double& s1, double& s2) {
  for (int64_t i0 = 0; i0 < len; i0 += kChunk) {
    const int64_t i1 = std::min(len, i0 + kChunk);
    acc_t p = 0, q = 0;
#pragma omp simd reduction(+ : p, q)
    for (int64_t i = i0; i < i1; ++i) {
      const acc_t xv = acc_t(x[i]);
      const acc_t dz = a.bwd(acc_t(dy[i]), xv * scale + shift);
      p += dz;
      q += dz * (xv - mean);
    }
    s1 += double(p);
    s2 += double(q);
  }
}

// dx = k * (dz - mean_dz - (x - mean) * proj), with k = w * invstd, mean_dz = sum_dz / n and
// proj = sum_dz_xmu * invstd^2 / n (both 0 in eval, where the statistics are constants).
// (x - mean) * proj, the gradient's path through the batch statistics -- exactly 0 when proj is (eval, where
// the statistics are constants): a select, not the product, because inf * 0 would make an inf x's gradient
// NaN where torch's eval gradient (weight * invstd * dy) is finite.
template <typename acc_t>
inline acc_t stat_term(acc_t xmu, acc_t proj) {
  return proj == acc_t(0) ? acc_t(0) : xmu * proj;
}

template <int ACT, typename scalar_t, typename acc_t>
inline void span_elemt(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dx,
                       int64_t len, acc_t mean, acc_t scale, acc_t shift, acc_t k, acc_t mean_dz, acc_t proj,
                       const ActC<ACT, acc_t>& a) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const acc_t xv = acc_t(x[i]);
    const acc_t dz = a.bwd(acc_t(dy[i]), xv * scale + shift);
    dx[i] = scalar_t(k * (dz - mean_dz - stat_term(xv - mean, proj)));
  }
}

// Per-channel constants of the normalisation.
template <typename acc_t>
struct Affine {
  std::vector<acc_t> mean, invstd, w, scale, shift;
  Affine(const acc_t* mean_, const acc_t* invstd_, const std::optional<at::Tensor>& weight,
         const std::optional<at::Tensor>& bias, int64_t C)
      : mean(mean_, mean_ + C), invstd(invstd_, invstd_ + C), w(per_channel<acc_t>(weight, C, acc_t(1))),
        scale(C), shift(C) {
    const std::vector<acc_t> b = per_channel<acc_t>(bias, C, acc_t(0));
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = invstd[c] * w[c];
      shift[c] = b[c] - mean[c] * scale[c];
    }
  }
};

int64_t num_tasks_rows(int64_t rows, int64_t C) {
  const int64_t by_size = (rows * std::max<int64_t>(C, 1) + kTaskElems - 1) / kTaskElems;
  return std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), by_size));
}

// Channel blocking pays when every thread gets whole channels in equal shares.
bool channel_blocked(const Geometry& g) {
  const int64_t nt = at::get_num_threads();
  return !g.cl && g.C > 0 && (nt == 1 || g.C % nt == 0 || g.C >= 4 * nt);
}

int64_t channel_grain(const Geometry& g) {  // channels per task: small tensors stay on one thread
  return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, g.count()));
}

// ---------------------------------------------------------------------------------------------------
// Statistics: per channel (mean, M2) in double
// ---------------------------------------------------------------------------------------------------

template <typename scalar_t>
void stats_ncl(const scalar_t* x, const Geometry& g, double* mean, double* m2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, L = g.L;
  // Tasks: (channel, planes [n0, n1), span [l0, l1)), merged per channel in task order afterwards, so the
  // result does not depend on how the threads were scheduled.
  struct Task { int64_t c, n0, n1, l0, l1; };
  std::vector<Task> tasks;
  for (int64_t c = 0; c < C; ++c) {
    if (L >= kTaskElems) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t l = 0; l < L; l += kTaskElems) tasks.push_back({c, n, n + 1, l, std::min(L, l + kTaskElems)});
    } else if (L > 0) {
      const int64_t k = std::max<int64_t>(1, kTaskElems / L);
      for (int64_t n = 0; n < N; n += k) tasks.push_back({c, n, std::min(N, n + k), 0, L});
    }
  }
  std::vector<Moments> part(tasks.size());
  at::parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> buf(kChunk);
    for (int64_t t = t0; t < t1; ++t) {
      const Task& k = tasks[t];
      for (int64_t n = k.n0; n < k.n1; ++n)
        span_moments(x + (n * C + k.c) * L + k.l0, k.l1 - k.l0, buf.data(), part[t]);
    }
  });
  std::vector<Moments> ch(C);
  for (size_t t = 0; t < tasks.size(); ++t) ch[tasks[t].c].merge(part[t].n, part[t].mean, part[t].m2);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = ch[c].mean;
    m2[c] = ch[c].m2;
  }
}

template <typename scalar_t>
void stats_nlc(const scalar_t* x, const Geometry& g, double* mean, double* m2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C, rows = g.count();
  if (C == 0) return;
  const int64_t T = num_tasks_rows(rows, C), per = (rows + T - 1) / T;
  // Per task, per channel (mean, M2) in double; all channels of a task share the count, so the merge of a
  // tile into them is one vectorisable loop over channels.
  std::vector<double> tmean(T * C, 0.0), tm2(T * C, 0.0), tn(T, 0.0);
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    const int64_t R = std::max<int64_t>(16, kChunk / C);  // rows per L1 tile
    std::vector<acc_t> buf(R * C), s(C), q(C);
    std::vector<double> md(C), qd(C);  // the tile's (mean, M2) per channel, in double
    for (int64_t t = t0; t < t1; ++t) {
      double* M = tmean.data() + t * C;
      double* Q = tm2.data() + t * C;
      double n = 0;
      const int64_t r_end = std::min(rows, (t + 1) * per);
      for (int64_t r0 = t * per; r0 < r_end; r0 += R) {
        const int64_t nr = std::min(R, r_end - r0);
        const acc_t* v = as_acc(x + r0 * C, nr * C, buf.data());
        acc_t* __restrict__ sp = s.data();
        acc_t* __restrict__ qp = q.data();
        std::fill(s.begin(), s.end(), acc_t(0));
        std::fill(q.begin(), q.end(), acc_t(0));
        for (int64_t r = 0; r < nr; ++r) {  // inner loop across channels: contiguous, vectorises
          const acc_t* __restrict__ row = v + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) sp[c] += row[c];
        }
        const acc_t inv = acc_t(1) / acc_t(nr);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) sp[c] *= inv;  // s becomes the tile's mean
        for (int64_t r = 0; r < nr; ++r) {
          const acc_t* __restrict__ row = v + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const acc_t d = row[c] - sp[c];
            qp[c] += d * d;
          }
        }
        double* __restrict__ ms = md.data();
        double* __restrict__ qs = qd.data();
        for (int64_t c = 0; c < C; ++c) {
          ms[c] = double(sp[c]);
          qs[c] = double(qp[c]);
          if (std::isfinite(sp[c]) && std::isfinite(qp[c])) continue;
          // this channel's float sums overflowed (or it holds inf/NaN): chunk_moments' fallback, strided
          const double mu = mean_no_overflow(v + c, nr, C);
          double m2c = 0.0;
          for (int64_t r = 0; r < nr; ++r) m2c += (double(v[r * C + c]) - mu) * (double(v[r * C + c]) - mu);
          ms[c] = mu;
          qs[c] = m2c;
        }
        // Chan merge of (nr, s, q) into (n, M, Q), every channel at once (the first tile is copied: delta^2
        // times a zero weight is NaN when delta^2 overflowed)
        const double nb = double(nr), nn = n + nb, wb = nb / nn, wq = n * nb / nn;
        if (n == 0) {
          std::copy(ms, ms + C, M);
          std::copy(qs, qs + C, Q);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const double delta = ms[c] - M[c];
            M[c] = std::isfinite(delta) ? M[c] + delta * wb : M[c] * (1.0 - wb) + ms[c] * wb;
            Q[c] += qs[c] + delta * delta * wq;
          }
        }
        n = nn;
      }
      tn[t] = n;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    Moments m;
    for (int64_t t = 0; t < T; ++t) m.merge(tn[t], tmean[t * C + c], tm2[t * C + c]);
    mean[c] = m.mean;
    m2[c] = m.m2;
  }
}

template <typename scalar_t>
void stats_any(const scalar_t* x, const Geometry& g, double* mean, double* m2) {
  if (g.count() == 0) {
    std::fill(mean, mean + g.C, 0.0);
    std::fill(m2, m2 + g.C, 0.0);
  } else if (g.cl) {
    stats_nlc(x, g, mean, m2);
  } else {
    stats_ncl(x, g, mean, m2);
  }
}

// ---------------------------------------------------------------------------------------------------
// Apply: y = act(x * scale[c] + shift[c])
// ---------------------------------------------------------------------------------------------------

template <int ACT, typename scalar_t, typename acc_t>
void apply_any(const scalar_t* x, scalar_t* y, const Geometry& g, const Affine<acc_t>& p, const ActC<ACT, acc_t>& a) {
  const int64_t C = g.C, L = g.L;
  if (g.cl) {
    const int64_t rows = g.count();
    const acc_t* __restrict__ sc = p.scale.data();
    const acc_t* __restrict__ sh = p.shift.data();
    at::parallel_for(0, rows, std::max<int64_t>(1, kTaskElems / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* __restrict__ xr = x + r * C;
        scalar_t* __restrict__ yr = y + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] = scalar_t(a.fwd(acc_t(xr[c]) * sc[c] + sh[c]));
      }
    });
  } else {
    // one task = whole planes, or a piece of a plane when planes are huge
    const int64_t piece = std::min<int64_t>(std::max<int64_t>(L, 1), kTaskElems);
    const int64_t pieces_per_plane = (L + piece - 1) / piece;
    const int64_t total = g.N * C * pieces_per_plane;
    at::parallel_for(0, total, std::max<int64_t>(1, kTaskElems / piece), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t plane = i / pieces_per_plane, l0 = (i % pieces_per_plane) * piece;
        const int64_t c = plane % C, len = std::min(piece, L - l0);
        span_apply(x + plane * L + l0, y + plane * L + l0, len, p.scale[c], p.shift[c], a);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward: the two sums, then dx
// ---------------------------------------------------------------------------------------------------

template <int ACT, typename scalar_t, typename acc_t>
void reduce_any(const scalar_t* dy, const scalar_t* x, const Geometry& g, const Affine<acc_t>& p,
                const ActC<ACT, acc_t>& a, double* s1, double* s2) {
  const int64_t N = g.N, C = g.C, L = g.L;
  std::fill(s1, s1 + C, 0.0);
  std::fill(s2, s2 + C, 0.0);
  if (g.count() == 0 || C == 0) return;
  if (g.cl) {
    const int64_t rows = g.count(), T = num_tasks_rows(rows, C), per = (rows + T - 1) / T;
    std::vector<double> t1s(T * C, 0.0), t2s(T * C, 0.0);
    at::parallel_for(0, T, 1, [&](int64_t ta, int64_t tb) {
      const int64_t R = std::max<int64_t>(16, kChunk / C);
      std::vector<acc_t> pv(C), qv(C);
      const acc_t* __restrict__ sc = p.scale.data();
      const acc_t* __restrict__ sh = p.shift.data();
      const acc_t* __restrict__ mu = p.mean.data();
      for (int64_t t = ta; t < tb; ++t) {
        double* __restrict__ A = t1s.data() + t * C;
        double* __restrict__ B = t2s.data() + t * C;
        const int64_t r_end = std::min(rows, (t + 1) * per);
        for (int64_t r0 = t * per; r0 < r_end; r0 += R) {  // fp32 sums per tile, double across tiles
          const int64_t r1 = std::min(r_end, r0 + R);
          acc_t* __restrict__ pp = pv.data();
          acc_t* __restrict__ qq = qv.data();
          std::fill(pv.begin(), pv.end(), acc_t(0));
          std::fill(qv.begin(), qv.end(), acc_t(0));
          for (int64_t r = r0; r < r1; ++r) {
            const scalar_t* __restrict__ xr = x + r * C;
            const scalar_t* __restrict__ dr = dy + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const acc_t xv = acc_t(xr[c]);
              const acc_t dz = a.bwd(acc_t(dr[c]), xv * sc[c] + sh[c]);
              pp[c] += dz;
              qq[c] += dz * (xv - mu[c]);
            }
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            A[c] += double(pp[c]);
            B[c] += double(qq[c]);
          }
        }
      }
    });
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        s1[c] += t1s[t * C + c];
        s2[c] += t2s[t * C + c];
      }
  } else {
    // per channel: parallel over channels, then (when there are few) over planes -- keep it simple: tasks
    // of whole planes of one channel, summed per channel in task order.
    struct Task { int64_t c, n0, n1; };
    std::vector<Task> tasks;
    const int64_t k = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(L, 1));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t n = 0; n < N; n += k) tasks.push_back({c, n, std::min(N, n + k)});
    std::vector<double> ta(tasks.size(), 0.0), tb(tasks.size(), 0.0);
    at::parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const Task& t = tasks[i];
        for (int64_t n = t.n0; n < t.n1; ++n) {
          const int64_t off = (n * C + t.c) * L;
          span_reduce(dy + off, x + off, L, p.mean[t.c], p.scale[t.c], p.shift[t.c], a, ta[i], tb[i]);
        }
      }
    });
    for (size_t i = 0; i < tasks.size(); ++i) {
      s1[tasks[i].c] += ta[i];
      s2[tasks[i].c] += tb[i];
    }
  }
}

// Per-channel constants of dx: k = w*invstd, mean_dz = sum_dz/n, proj = sum_dz_xmu*invstd^2/n.
template <typename acc_t>
struct GradConsts {
  std::vector<acc_t> k, mean_dz, proj;
  GradConsts(const Affine<acc_t>& p, const acc_t* s1, const acc_t* s2, int64_t count, bool use_batch_stats, int64_t C)
      : k(C), mean_dz(C, acc_t(0)), proj(C, acc_t(0)) {
    const acc_t inv_n = acc_t(1) / acc_t(std::max<int64_t>(count, 1));
    for (int64_t c = 0; c < C; ++c) {
      k[c] = p.w[c] * p.invstd[c];
      if (use_batch_stats) {
        mean_dz[c] = s1[c] * inv_n;
        proj[c] = s2[c] * p.invstd[c] * p.invstd[c] * inv_n;
      }
    }
  }
};

template <int ACT, typename scalar_t, typename acc_t>
void elemt_any(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const Geometry& g, const Affine<acc_t>& p,
               const GradConsts<acc_t>& q, const ActC<ACT, acc_t>& a) {
  const int64_t C = g.C, L = g.L;
  if (g.cl) {
    const acc_t *sc = p.scale.data(), *sh = p.shift.data(), *mu = p.mean.data();
    const acc_t *k = q.k.data(), *md = q.mean_dz.data(), *pr = q.proj.data();
    at::parallel_for(0, g.count(), std::max<int64_t>(1, kTaskElems / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* __restrict__ xr = x + r * C;
        const scalar_t* __restrict__ dr = dy + r * C;
        scalar_t* __restrict__ out = dx + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t xv = acc_t(xr[c]);
          const acc_t dz = a.bwd(acc_t(dr[c]), xv * sc[c] + sh[c]);
          out[c] = scalar_t(k[c] * (dz - md[c] - stat_term(xv - mu[c], pr[c])));
        }
      }
    });
  } else {
    const int64_t planes = g.N * C;
    at::parallel_for(0, planes, std::max<int64_t>(1, kTaskElems / std::max<int64_t>(L, 1)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t c = i % C;
        span_elemt(dy + i * L, x + i * L, dx + i * L, L, p.mean[c], p.scale[c], p.shift[c], q.k[c], q.mean_dz[c],
                   q.proj[c], a);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x_in) {
  check_x(x_in, "x");
  Geometry g;
  const at::Tensor x = dense(x_in, g);
  auto mean = at::empty({g.C}, x.options().dtype(at::kDouble));
  auto m2 = at::empty({g.C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_stats", [&] {
    stats_any<scalar_t>(x.data_ptr<scalar_t>(), g, mean.data_ptr<double>(), m2.data_ptr<double>());
  });
  return {mean.to(acc_type(x)), m2.to(acc_type(x))};
}

at::Tensor bn_apply(const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& invstd,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                    const std::string& act, double leak, double sub, double maxv) {
  check_x(x_in, "x");
  check_stat(mean, "mean", x_in);
  check_stat(invstd, "invstd", x_in);
  check_param(weight, "weight", x_in);
  check_param(bias, "bias", x_in);
  const int kind = act_kind(act, leak, sub, maxv);
  Geometry g;
  const at::Tensor x = dense(x_in, g);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor m = mean.contiguous(), s = invstd.contiguous();
    const Affine<acc_t> p(m.data_ptr<acc_t>(), s.data_ptr<acc_t>(), weight, bias, g.C);
    dispatch_act(kind, [&](auto K) {
      const ActC<decltype(K)::value, acc_t> a{acc_t(leak), acc_t(sub), acc_t(maxv)};
      apply_any(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g, p, a);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool use_batch_stats, double eps, const std::string& act, double leak, double sub, double maxv) {
  check_x(x_in, "x");
  check_param(weight, "weight", x_in);
  check_param(bias, "bias", x_in);
  check_param(running_mean, "running_mean", x_in);
  check_param(running_var, "running_var", x_in);
  const int kind = act_kind(act, leak, sub, maxv);
  // torch's rule: eps > 0 in training (a constant channel's var is 0), >= 0 in eval
  PYDL_CHECK_VALUE(use_batch_stats ? eps > 0 : eps >= 0, kOp, ": eps must be > 0 in training, >= 0 in eval, got ",
                   eps, use_batch_stats ? " in training" : " in eval");
  const bool have_running = running_mean.has_value() && running_mean->defined() && running_var.has_value() &&
                            running_var->defined();
  PYDL_CHECK_VALUE(use_batch_stats || have_running, kOp,
                   ": eval mode (use_batch_stats=False) needs running_mean and running_var");
  Geometry g;
  const at::Tensor x = dense(x_in, g);
  PYDL_CHECK_VALUE(!use_batch_stats || g.count() != 1, "Expected more than 1 value per channel when training, got "
                   "input size ", x.sizes());
  const auto acc = acc_type(x);
  auto y = at::empty_like(x);
  auto mean = small_empty(g.C, acc), invstd = small_empty(g.C, acc), var = small_empty(g.C, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = g.C, N = g.N, L = g.L, n = g.count();
    acc_t* mp = mean.data_ptr<acc_t>();
    acc_t* ip = invstd.data_ptr<acc_t>();
    acc_t* vp = var.data_ptr<acc_t>();
    const std::vector<acc_t> w = per_channel<acc_t>(weight, C, acc_t(1)), b = per_channel<acc_t>(bias, C, acc_t(0));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    auto finish_channel = [&](int64_t c, double mu, double m2) {  // statistics -> the stored constants
      mp[c] = acc_t(mu);
      vp[c] = acc_t(m2 / double(std::max<int64_t>(n, 1)));
      ip[c] = acc_t(1) / std::sqrt(vp[c] + acc_t(eps));
    };
    dispatch_act(kind, [&](auto K) {
      const ActC<decltype(K)::value, acc_t> a{acc_t(leak), acc_t(sub), acc_t(maxv)};
      if (use_batch_stats && channel_blocked(g) && n > 0) {
        // Channel blocking: statistics of channel c, then normalise it while it is still in L2.
        at::parallel_for(0, C, channel_grain(g), [&](int64_t c0, int64_t c1) {
          std::vector<acc_t> buf(kChunk);
          for (int64_t c = c0; c < c1; ++c) {
            Moments m;
            for (int64_t i = 0; i < N; ++i) span_moments(xp + (i * C + c) * L, L, buf.data(), m);
            finish_channel(c, m.mean, m.m2);
            const acc_t scale = ip[c] * w[c], shift = b[c] - mp[c] * scale;
            for (int64_t i = 0; i < N; ++i) span_apply(xp + (i * C + c) * L, yp + (i * C + c) * L, L, scale, shift, a);
          }
        });
        return;
      }
      if (use_batch_stats) {
        std::vector<double> mu(C), m2(C);
        stats_any(xp, g, mu.data(), m2.data());
        for (int64_t c = 0; c < C; ++c) finish_channel(c, mu[c], m2[c]);
      } else {
        const std::vector<acc_t> rm = per_channel<acc_t>(running_mean, C, acc_t(0));
        const std::vector<acc_t> rv = per_channel<acc_t>(running_var, C, acc_t(1));
        for (int64_t c = 0; c < C; ++c) {
          mp[c] = rm[c];
          vp[c] = rv[c];
          ip[c] = acc_t(1) / std::sqrt(rv[c] + acc_t(eps));
        }
      }
      const Affine<acc_t> p(mp, ip, weight, bias, C);
      apply_any(xp, yp, g, p, a);
    });
  });
  return {y, mean, invstd, var};
}

void bn_update_running(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                       const at::Tensor& var, int64_t count, std::optional<double> momentum,
                       const std::optional<at::Tensor>& num_batches_tracked) {
  const int64_t C = mean.numel();
  const at::Tensor* all[] = {&running_mean, &running_var, &mean, &var};
  for (const at::Tensor* t : all) {
    check_device(*t, c10::DeviceType::CPU, "batch_norm_update_running", "running stats");
    check_floating(*t, "batch_norm_update_running", "running stats");
    PYDL_CHECK_VALUE(t->dim() == 1 && t->numel() == C, "batch_norm_update_running: running_mean, running_var, "
                     "mean and var must all have shape (", C, ",), got ", t->sizes());
  }
  PYDL_CHECK_VALUE(momentum.has_value() || (num_batches_tracked.has_value() && num_batches_tracked->defined()),
                   "batch_norm_update_running: momentum=None (cumulative average) needs num_batches_tracked");
  PYDL_CHECK_VALUE(!momentum.has_value() || std::isfinite(*momentum),
                   "batch_norm_update_running: momentum must be a finite float or None, got ", momentum.value_or(0));
  PYDL_CHECK_VALUE(count >= 0, "batch_norm_update_running: count must be an int >= 0, got ", count);
  int64_t nbt = 1;
  if (!momentum.has_value()) {  // the factor is 1 / num_batches_tracked: 0 would make the running stats NaN
    const at::Tensor& t = *num_batches_tracked;
    PYDL_CHECK_VALUE(t.numel() == 1 && !t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool,
                     "batch_norm_update_running: num_batches_tracked must be a one-element integer tensor, got ",
                     t.sizes(), " ", t.scalar_type());
    nbt = t.item<int64_t>();
    PYDL_CHECK_VALUE(nbt >= 1, "batch_norm_update_running: num_batches_tracked must be >= 1 with momentum=None "
                     "(the running stats average 1 / num_batches_tracked of each batch), got ", nbt);
  }
  if (count == 0) return;  // an empty batch leaves the running stats alone (as torch does)
  const double f = momentum.has_value() ? *momentum : 1.0 / double(nbt);
  const double bessel = count > 1 ? double(count) / double(count - 1) : 1.0;  // n / (n - 1): unbiased variance
  // mean and var read in place in double (per_channel: no to(kDouble) copies to allocate)
  const std::vector<double> mv = per_channel<double>(mean, C, 0.0), vv = per_channel<double>(var, C, 0.0);
  const double* mp = mv.data();
  const double* vp = vv.data();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "pydl_bn_rm", [&] {
    scalar_t* r = running_mean.data_ptr<scalar_t>();  // (C,) tensors: stride 1 unless someone sliced them
    const int64_t s = running_mean.stride(0);
    for (int64_t c = 0; c < C; ++c) r[c * s] = scalar_t((1 - f) * double(r[c * s]) + f * mp[c]);
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_var.scalar_type(), "pydl_bn_rv", [&] {
    scalar_t* r = running_var.data_ptr<scalar_t>();
    const int64_t s = running_var.stride(0);
    for (int64_t c = 0; c < C; ++c) r[c * s] = scalar_t((1 - f) * double(r[c * s]) + f * vp[c] * bessel);
  });
}

void check_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  check_x(x, "x");
  check_x(dy, "dy");
  PYDL_CHECK_VALUE(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), kOp,
                   ": dy must match x (shape ", x.sizes(), ", ", x.scalar_type(), "), got ", dy.sizes(), " ",
                   dy.scalar_type());
  check_stat(mean, "mean", x);
  check_stat(invstd, "invstd", x);
  check_param(weight, "weight", x);
  check_param(bias, "bias", x);
}

at::Tensor like(const at::Tensor& dy, const at::Tensor& x) {  // dy in x's dense layout
  return dy.strides() == x.strides() ? dy : at::empty_like(x).copy_(dy);
}

std::tuple<at::Tensor, at::Tensor> bn_backward_reduce(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                      const at::Tensor& mean, const at::Tensor& invstd,
                                                      const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias, const std::string& act,
                                                      double leak, double sub, double maxv) {
  check_backward(dy_in, x_in, mean, invstd, weight, bias);
  const int kind = act_kind(act, leak, sub, maxv);
  Geometry g;
  const at::Tensor x = dense(x_in, g);
  const at::Tensor dy = like(dy_in, x);
  auto s1 = at::empty({g.C}, x.options().dtype(at::kDouble));
  auto s2 = at::empty({g.C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_reduce", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor m = mean.contiguous(), s = invstd.contiguous();
    const Affine<acc_t> p(m.data_ptr<acc_t>(), s.data_ptr<acc_t>(), weight, bias, g.C);
    dispatch_act(kind, [&](auto K) {
      const ActC<decltype(K)::value, acc_t> a{acc_t(leak), acc_t(sub), acc_t(maxv)};
      reduce_any(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), g, p, a, s1.data_ptr<double>(), s2.data_ptr<double>());
    });
  });
  return {s1.to(acc_type(x)), s2.to(acc_type(x))};
}

at::Tensor bn_backward_elemt(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean,
                             const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& sum_dz,
                             const at::Tensor& sum_dz_xmu, int64_t count, const std::string& act, double leak,
                             double sub, double maxv) {
  check_backward(dy_in, x_in, mean, invstd, weight, bias);
  check_stat(sum_dz, "sum_dz", x_in);
  check_stat(sum_dz_xmu, "sum_dz_xmu", x_in);
  PYDL_CHECK_VALUE(count >= 0, "batch_norm_backward_elemt: count must be an int >= 0, got ", count);
  const int kind = act_kind(act, leak, sub, maxv);
  Geometry g;
  const at::Tensor x = dense(x_in, g);
  const at::Tensor dy = like(dy_in, x);
  auto dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_elemt", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor m = mean.contiguous(), s = invstd.contiguous(), a1 = sum_dz.contiguous(), a2 = sum_dz_xmu.contiguous();
    const Affine<acc_t> p(m.data_ptr<acc_t>(), s.data_ptr<acc_t>(), weight, bias, g.C);
    const GradConsts<acc_t> q(p, a1.data_ptr<acc_t>(), a2.data_ptr<acc_t>(), count, true, g.C);
    dispatch_act(kind, [&](auto K) {
      const ActC<decltype(K)::value, acc_t> a{acc_t(leak), acc_t(sub), acc_t(maxv)};
      elemt_any(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), g, p, q, a);
    });
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& invstd,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, bool use_batch_stats,
    const std::string& act, double leak, double sub, double maxv, bool input_grad) {
  check_backward(dy_in, x_in, mean, invstd, weight, bias);
  const int kind = act_kind(act, leak, sub, maxv);
  Geometry g;
  const at::Tensor x = dense(x_in, g);
  const at::Tensor dy = like(dy_in, x);
  const auto acc = acc_type(x);
  auto dx = input_grad ? at::empty_like(x) : at::empty({0}, x.options());
  auto dw = at::empty({g.C}, x.options().dtype(acc));
  auto db = at::empty({g.C}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = g.C, N = g.N, L = g.L, n = g.count();
    const at::Tensor m = mean.contiguous(), s = invstd.contiguous();
    const Affine<acc_t> p(m.data_ptr<acc_t>(), s.data_ptr<acc_t>(), weight, bias, C);
    acc_t* dwp = dw.data_ptr<acc_t>();
    acc_t* dbp = db.data_ptr<acc_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    dispatch_act(kind, [&](auto K) {
      const ActC<decltype(K)::value, acc_t> a{acc_t(leak), acc_t(sub), acc_t(maxv)};
      if (input_grad && channel_blocked(g) && n > 0) {
        // Channel blocking: both sums of channel c, then its dx, while (dy, x) of c are still in L2.
        scalar_t* dxp = dx.data_ptr<scalar_t>();
        const acc_t inv_n = acc_t(1) / acc_t(n);
        at::parallel_for(0, C, channel_grain(g), [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            double s1 = 0, s2 = 0;
            for (int64_t i = 0; i < N; ++i) {
              const int64_t off = (i * C + c) * L;
              span_reduce(dyp + off, xp + off, L, p.mean[c], p.scale[c], p.shift[c], a, s1, s2);
            }
            dbp[c] = acc_t(s1);
            dwp[c] = acc_t(s2) * p.invstd[c];
            const acc_t k = p.w[c] * p.invstd[c];
            const acc_t mean_dz = use_batch_stats ? acc_t(s1) * inv_n : acc_t(0);
            const acc_t proj = use_batch_stats ? acc_t(s2) * p.invstd[c] * p.invstd[c] * inv_n : acc_t(0);
            for (int64_t i = 0; i < N; ++i) {
              const int64_t off = (i * C + c) * L;
              span_elemt(dyp + off, xp + off, dxp + off, L, p.mean[c], p.scale[c], p.shift[c], k, mean_dz, proj, a);
            }
          }
        });
        return;
      }
      std::vector<double> s1(C), s2(C);
      reduce_any(dyp, xp, g, p, a, s1.data(), s2.data());
      std::vector<acc_t> a1(C), a2(C);
      for (int64_t c = 0; c < C; ++c) {
        a1[c] = acc_t(s1[c]);
        a2[c] = acc_t(s2[c]);
        dbp[c] = a1[c];
        dwp[c] = a2[c] * p.invstd[c];
      }
      if (input_grad) {
        const GradConsts<acc_t> q(p, a1.data(), a2.data(), n, use_batch_stats, C);
        elemt_any(dyp, xp, dx.data_ptr<scalar_t>(), g, p, q, a);
      }
    });
  });
  return {dx, dw, db};
}


// ---------------------------------------------------------------------------------------------------
// The eval door's autograd node (pydl.nn modules in eval mode, plain eager calls on this backend)
// ---------------------------------------------------------------------------------------------------
// Why in C++: after a large input's kernel has streamed megabytes through the caches, the Python
// torch.autograd.Function of the eager door (pydl/ops/batch_norm.py, _EagerBatchNorm) ran cold at ~25 us a
// call; torch's own batch_norm builds its node in C++. One dispatcher call (CompositeImplicitAutograd, so
// the kernel below runs above autograd) checks, runs bn_forward and, only when a gradient can flow, makes
// the node. Only this backend's eval: training keeps the Python door (it also updates the running stats),
// and the other backends (Triton, reference) are Python. The backward is the same kernel the Python door
// calls, or -- when a graph is being built (create_graph=True) -- the registered pydl::batch_norm_backward
// op, whose own autograd is the double backward: second derivatives stay exactly the Python door's.

struct EvalCfg {  // the non-differentiable arguments: not tensors to Function::apply, so never graph inputs
  const at::Tensor& running_mean;
  const at::Tensor& running_var;
  double eps, leak, sub, maxv;
  const std::string& act;
  const std::string& backend;
};

struct EvalNode : public torch::autograd::Function<EvalNode> {
  // weight/bias: optional, since Function::apply takes an absent one (nullopt) for no graph input at all,
  // where an undefined at::Tensor would be an input with no device
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            const EvalCfg& c) {
    auto [y, mean, invstd, var] = bn_forward(x, weight, bias, c.running_mean, c.running_var, false, c.eps, c.act,
                                             c.leak, c.sub, c.maxv);
    ctx->save_for_backward({x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()), mean, invstd});
    ctx->saved_data["act"] = c.act;
    ctx->saved_data["backend"] = c.backend;
    ctx->saved_data["f"] = c10::List<double>({c.leak, c.sub, c.maxv});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mean = saved[3], &invstd = saved[4];
    const std::optional<at::Tensor> weight = saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const std::optional<at::Tensor> bias = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const std::string act(ctx->saved_data["act"].toStringRef());
    const auto f = ctx->saved_data["f"].toDoubleList();
    const double leak = f[0], sub = f[1], maxv = f[2];
    // needs_input_grad counts graph inputs only: an absent weight shifts bias's index
    const bool need_x = ctx->needs_input_grad(0), need_w = weight && ctx->needs_input_grad(1),
               need_b = bias && ctx->needs_input_grad(weight ? 2 : 1);
    at::Tensor dx, dw, db;
    if (at::GradMode::is_enabled()) {
      static const auto op =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("pydl::batch_norm_backward", "")
              .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                  const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, c10::string_view, double,
                  double, double, bool, c10::string_view)>();
      std::tie(dx, dw, db) = op.call(grads[0], x, mean, invstd, weight, bias, false, act, leak, sub, maxv, need_x,
                                     ctx->saved_data["backend"].toStringRef());
    } else {
      std::tie(dx, dw, db) = bn_backward(grads[0], x, mean, invstd, weight, bias, false, act, leak, sub, maxv, need_x);
      // the parameters' dtype (fp16/bf16 ones: the kernel's sums are fp32), as the Python door does
      if (weight && weight->scalar_type() != dw.scalar_type()) dw = dw.to(weight->scalar_type());
      if (bias && bias->scalar_type() != db.scalar_type()) db = db.to(bias->scalar_type());
    }
    return {need_x ? dx : at::Tensor(), need_w ? dw : at::Tensor(), need_b ? db : at::Tensor(), at::Tensor()};
  }
};

bool wants_grad(const std::optional<at::Tensor>& t) { return t && t->defined() && t->requires_grad(); }

at::Tensor bn_eval(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                   const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                   const at::Tensor& running_var, double eps, const std::string& act, double leak, double sub,
                   double maxv, const std::string& backend) {
  if (!(at::GradMode::is_enabled() && (x.requires_grad() || wants_grad(weight) || wants_grad(bias))))
    return std::get<0>(bn_forward(x, weight, bias, running_mean, running_var, false, eps, act, leak, sub, maxv));
  const EvalCfg cfg{running_mean, running_var, eps, leak, sub, maxv, act, backend};
  return EvalNode::apply(x, weight, bias, cfg);
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) {
  for (const char* s : pydl::schema::batch_norm) m.def(s);  // csrc/schemas.h
  // the eval door (above): CPU only, so its schema is not in schemas.h
  m.def("batch_norm_eval(Tensor x, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, "
        "float eps, str act, float leak, float sub, float maxv, str backend) -> Tensor");
}

TORCH_LIBRARY_IMPL(pydl_cpu, CompositeImplicitAutograd, m) { m.impl("batch_norm_eval", &pydl::bn_eval); }

TORCH_LIBRARY_IMPL(pydl_cpu, CPU, m) {
  m.impl("batch_norm_forward", &pydl::bn_forward);
  m.impl("batch_norm_update_running", &pydl::bn_update_running);
  m.impl("batch_norm_backward", &pydl::bn_backward);
  m.impl("batch_norm_stats", &pydl::bn_stats);
  m.impl("batch_norm_apply", &pydl::bn_apply);
  m.impl("batch_norm_backward_reduce", &pydl::bn_backward_reduce);
  m.impl("batch_norm_backward_elemt", &pydl::bn_backward_elemt);
}
