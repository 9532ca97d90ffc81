// Stand-in for CUDA's <mma.h> in the CPU emulation: the WMMA API (nvcuda::wmma), warp-level matrix
// multiply-accumulate on "tensor cores". Included after the emulator (cuda_emu.h), whose warp barrier it uses.
//
// What a fragment is: a warp's matrix tile, spread over the registers of its 32 lanes. Which lane holds which
// element is unspecified (code may only apply the same operation to every element, as conv2d.cu's
// __float_to_tf32 loop does), so here lane l holds the elements l, l + 32, l + 64, ... of the tile in
// row-major order: num_elements = rows * cols / 32 per lane.
//
// Every wmma function is warp-collective: all 32 lanes must call it together, with the same arguments. The
// emulator models that the way the hardware needs it: each function is a warp barrier (__syncwarp with the
// full mask, at the caller's source line), so a lane that skips the call, takes another branch or has exited
// is reported by synccheck instead of silently computing with stale registers. load/store move each lane's own
// share through the kernel's pointer (instrumented: memcheck, racecheck and initcheck see them as that lane's
// accesses). mma_sync is the one step that needs other lanes' registers: every lane publishes where its
// fragments are, a warp barrier, each lane computes its share of D from all 32 lanes' fragments, a second
// barrier (so no lane overwrites an input another still reads: D is often C).
//
// Numerics, as the tensor cores: fp16, bf16 and tf32 inputs, products exact (11 + 11 or 8 + 8 significant
// bits fit fp32), accumulated in fp32 from C, k ascending. The hardware's internal order of the K-sum is not
// documented: results may differ from a GPU in the last bits of fp32, never more. __float_to_tf32 is
// cvt.rna.tf32.f32: round to 10 mantissa bits, ties AWAY from zero (not to even), as the device does.
//
// Shapes: m16n16k16, m32n8k16, m8n32k16 for __half / __nv_bfloat16; m16n16k8 for precision::tf32; m8n8k4 for
// double. Anything else does not compile, as with nvcc.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <unordered_map>

#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {

template <typename T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };  // tf32 values live in fp32 registers

template <typename Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <int M, int N, int K, typename T>
constexpr bool supported() {
  if (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value)
    return (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16);
  if (std::is_same<T, precision::tf32>::value) return M == 16 && N == 16 && K == 8;
  if (std::is_same<T, double>::value) return M == 8 && N == 8 && K == 4;
  return false;
}

template <typename T> inline float widen(T v) { return float(v); }
inline float widen(__half v) { return __half2float(v); }
inline float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// The lane's position in its warp and a key for the warp among every live warp of the launch.
PYDL_EMU_NOSAN inline int lane_id() {
  return int((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32u);
}
PYDL_EMU_NOSAN inline uint64_t warp_key() {
  const uint64_t block = blockIdx.x + uint64_t(gridDim.x) * (blockIdx.y + uint64_t(gridDim.y) * blockIdx.z);
  const uint64_t t = threadIdx.x + uint64_t(blockDim.x) * (threadIdx.y + uint64_t(blockDim.y) * threadIdx.z);
  return block * 64 + t / 32;  // at most 32 warps a block
}
// Where each lane of a warp keeps its fragments during mma_sync: a lane reads the others' registers through
// these pointers (their fibers are parked at the warp barrier, so their stack frames are alive). Keyed by
// warp; emptied when a new launch starts (no warp of an earlier launch can be inside mma_sync then).
struct WarpTable {
  const void* a[32];
  const void* b[32];
  const void* c[32];
};
PYDL_EMU_NOSAN inline WarpTable& table(uint64_t key) {
  pydl_emu::Quiet q;  // the map's code is instrumented library code: its accesses are not the kernel's
  static std::unordered_map<uint64_t, WarpTable> all;  // node-based: a reference survives later insertions
  static unsigned long long launch = ~0ull;
  if (pydl_emu::st().launches != launch) {
    all.clear();
    launch = pydl_emu::st().launches;
  }
  return all[key];
}

// Element e (row-major index in the tile) of the warp's fragment whose lanes' copies `lanes` points to.
template <typename Frag>
PYDL_EMU_NOSAN inline double element(const void* const* lanes, int e) {
  return double(widen(static_cast<const Frag*>(lanes[e % 32])->x[e / 32]));
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(std::is_same<Use, accumulator>::value
                    ? (std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                       std::is_same<T, double>::value) &&
                          (detail::supported<M, N, K, __half>() || detail::supported<M, N, K, precision::tf32>() ||
                           detail::supported<M, N, K, double>())
                    : detail::supported<M, N, K, T>(),
                "this WMMA fragment shape / element type does not exist on the device");
  static constexpr int kRows = detail::dims<Use, M, N, K>::rows, kCols = detail::dims<Use, M, N, K>::cols;

 public:
  using element_type = typename detail::storage<T>::type;
  using storage_element_type = element_type;
  static constexpr int num_elements = kRows * kCols / 32;
  static constexpr int rows = kRows, cols = kCols;
  element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  using E = typename fragment<Use, M, N, K, T, L>::element_type;
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = E(v);
}

// A tile must start on a 32-byte boundary and its rows (columns) be a multiple of 16 bytes apart: the
// device's rules for load/store_matrix_sync (breaking them is undefined behaviour there; here a report).
template <typename P>
PYDL_EMU_NOSAN inline void check_tile(const P* p, unsigned ldm, const char* what, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (size_t(ldm) * sizeof(P)) % 16 != 0)
    pydl_emu::fail("memcheck", std::string(what) + " at " + file + ":" + std::to_string(line) + " by " +
                                   pydl_emu::who(pydl_emu::g_current) + ": the pointer must be 32-byte aligned "
                                   "and ldm * sizeof(element) a multiple of 16 bytes (got pointer " +
                                   pydl_emu::hex_addr(reinterpret_cast<uintptr_t>(p)) + ", ldm " +
                                   std::to_string(ldm) + ")",
                   cudaErrorIllegalAddress);
}

// matrix_a / matrix_b: the layout is part of the fragment's type.
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(!std::is_same<L, void>::value, "a matrix_a / matrix_b fragment needs row_major or col_major");
  __syncwarp(0xffffffffu, file, line);
  check_tile(p, ldm, "load_matrix_sync", file, line);
  using Fr = fragment<Use, M, N, K, T, L>;
  const int l = detail::lane_id();
  for (int t = 0; t < Fr::num_elements; ++t) {
    const int e = l + 32 * t, r = e / Fr::cols, c = e % Fr::cols;
    f.x[t] = std::is_same<L, row_major>::value ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  }
}

// accumulator: the layout is an argument.
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  check_tile(p, ldm, "load_matrix_sync", file, line);
  const int l = detail::lane_id();
  for (int t = 0; t < f.num_elements; ++t) {
    const int e = l + 32 * t, r = e / N, c = e % N;
    f.x[t] = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  }
}

template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  __syncwarp(0xffffffffu, file, line);
  check_tile(p, ldm, "store_matrix_sync", file, line);
  const int l = detail::lane_id();
  for (int t = 0; t < f.num_elements; ++t) {
    const int e = l + 32 * t, r = e / N, c = e % N;
    (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = f.x[t];
  }
}

// D = A * B + C, for the whole warp. Inputs are exact in fp32 (fp16 / bf16 / tf32 values) and so are their
// products; the sum runs in fp32 (fp64 for double fragments).
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC, typename TD>
PYDL_EMU_NOSAN inline void mma_sync(fragment<accumulator, M, N, K, TD>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                                    const fragment<matrix_b, M, N, K, TB, LB>& b,
                                    const fragment<accumulator, M, N, K, TC>& c, const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TB, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  using acc_t = typename std::conditional<std::is_same<TD, double>::value, double, float>::type;
  const int l = detail::lane_id();
  detail::WarpTable& tb = detail::table(detail::warp_key());
  tb.a[l] = &a;
  tb.b[l] = &b;
  tb.c[l] = &c;
  __syncwarp(0xffffffffu, file, line);  // every lane's fragments are reachable
  acc_t out[M * N / 32];
  for (int t = 0; t < d.num_elements; ++t) {
    const int e = l + 32 * t, r = e / N, col = e % N;
    acc_t acc = acc_t(detail::element<FC>(tb.c, e));
    for (int k = 0; k < K; ++k)
      acc += acc_t(detail::element<FA>(tb.a, r * K + k)) * acc_t(detail::element<FB>(tb.b, k * N + col));
    out[t] = acc;
  }
  __syncwarp(0xffffffffu, file, line);  // every lane has read: d may be c, and the table may be refilled
  using E = typename fragment<accumulator, M, N, K, TD>::element_type;
  for (int t = 0; t < d.num_elements; ++t) d.x[t] = E(out[t]);
}

// fp32 -> tf32 (an fp32 with the low 13 mantissa bits zero): round to nearest, ties away from zero
// (cvt.rna.tf32.f32). Adding half of the last kept bit's weight to the magnitude's bits and truncating does
// exactly that, carries into the exponent included (the largest finite values round to infinity). NaN stays
// NaN (canonical), infinity stays infinity.
PYDL_EMU_NOSAN inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    u = 0x7fffffffu;
  } else if ((u & 0x7fffffffu) != 0x7f800000u) {
    u = (u + 0x1000u) & ~0x1fffu;
  }
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace wmma
}  // namespace nvcuda
