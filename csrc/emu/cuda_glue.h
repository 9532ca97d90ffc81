// The emulated backend's glue: compiles a CUDA op's ATen glue, csrc/cuda/<op>.cpp, UNCHANGED for CPU tensors.
//
// The build (pydl/_build.py, unit pydl_cuda_emu_<op>) compiles a two-line file:
//     #include "cuda_glue.h"
//     #include "cuda/<op>.cpp"
// with csrc/emu/glue/ first on the include path. Everything the glue needs from CUDA is then stood in for:
//   * <c10/cuda/CUDAGuard.h>, <c10/cuda/CUDAStream.h> come from csrc/emu/glue/ (one emulated device, one
//     stream; the guard serialises the emulated device between threads);
//   * <cuda_runtime_api.h> is the emulator's (csrc/emu/), so cudaGetErrorString, device attributes, ... answer
//     for the emulated device; "cuda/common_cuda.h" maps a CPU tensor's device index (-1) to that device (0);
//   * memcheck must know which memory a kernel may touch: the op's tensors. Every op registered below is
//     wrapped (TORCH_LIBRARY_IMPL is redefined) so that, while it runs, the extent of each tensor argument
//     and every CPU allocation the op makes (outputs, workspaces, contiguous copies) are registered with the
//     emulator (pydl_emu::track), and unregistered when the op returns. A kernel that reads or writes
//     anywhere else is reported, naming the nearest tensor (by its schema argument name);
//   * two macros retarget the glue: its ops go to the torch library `pydl_cuda_emu` instead of `pydl_cuda`
//     (both libraries can be loaded in one process), and the dispatch key / device checks say CPU where the
//     glue says CUDA. The macros are defined AFTER every torch header the glues use is included, so they touch
//     the glue's own tokens only (a header first included after this point could be renamed too: add it to
//     the list below).
//
// One glue source for both backends, so the emulated tests exercise the real argument checks, layouts,
// allocations and launcher choices, not a copy of them.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <thread>

namespace pydl_emu_glue {

// ---- what the kernels may touch while one op runs ---------------------------------------------------------
struct Tracking {
  int depth = 0;                      // nesting of wrapped ops on the owning thread (only the outermost tracks)
  std::thread::id owner;              // the thread running the op (the emulated device is locked to it)
  std::vector<const void*> starts;    // what was passed to pydl_emu::track, to take back at the end
};
inline Tracking& tracking() {
  static Tracking t;
  return t;
}

// The CPU allocator, wrapped: an allocation made by the thread running an op (its outputs, workspaces and
// copies) is registered for the op's duration. Outside an op it only passes the call on; the DataPtr is
// always the wrapped allocator's own, so nothing downstream can tell the difference.
class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = base_->allocate(n);
    Tracking& t = tracking();
    if (t.depth > 0 && n > 0 && p.get() && t.owner == std::this_thread::get_id()) {
      pydl_emu::track(p.get(), n, "a tensor the op allocated (an output or a workspace)");
      t.starts.push_back(p.get());
    }
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    base_->copy_data(dest, src, count);
  }

 private:
  c10::Allocator* base_;
};

inline void install_allocator() {
  static TrackingAllocator* mine = [] {
    auto* a = new TrackingAllocator(c10::GetCPUAllocator());  // lives as long as the process, as allocators do
    c10::SetCPUAllocator(a, 0);
    if (c10::GetCPUAllocator() != a) c10::SetCPUAllocator(a, 255);  // someone registered one with a priority
    return a;
  }();
  TORCH_CHECK(c10::GetCPUAllocator() == mine, "pydl cuda_emu: could not wrap the CPU allocator, so memcheck "
              "cannot know the op's outputs");
}

// [lo, hi) bytes of a tensor argument: the span its elements occupy, not its whole storage (a kernel that
// reads a sliced view's neighbours is out of bounds).
struct Span {
  uintptr_t lo, hi;
  std::string name;
};
inline void add_span(std::vector<Span>& out, const at::Tensor& t, const std::string& name) {
  if (!t.defined() || !t.is_cpu() || t.numel() == 0) return;
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(t.data_ptr());
  out.push_back(Span{lo, lo + uintptr_t(last + 1) * t.element_size(), name});
}
inline void add_spans(std::vector<Span>& out, const at::Tensor& t, const std::string& n) { add_span(out, t, n); }
inline void add_spans(std::vector<Span>& out, const std::optional<at::Tensor>& t, const std::string& n) {
  if (t) add_span(out, *t, n);
}
inline void add_spans(std::vector<Span>& out, at::TensorList ts, const std::string& n) {
  for (size_t i = 0; i < ts.size(); ++i) add_span(out, ts[i], n + "[" + std::to_string(i) + "]");
}
template <typename T>
inline void add_spans(std::vector<Span>&, const T&, const std::string&) {}  // not a tensor

// While alive: the emulated device is this thread's, and the op's tensors are registered.
class OpScope {
 public:
  OpScope() : lock_(c10::cuda::emu_detail::device_lock()) {
    Tracking& t = tracking();
    if (t.depth++ == 0) {
      install_allocator();
      t.owner = std::this_thread::get_id();
    }
  }
  void inputs(std::vector<Span> spans) {
    Tracking& t = tracking();
    if (t.depth != 1) return;
    // overlapping views of one buffer become one range (the emulator keys ranges by their start)
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
    for (size_t i = 0; i < spans.size();) {
      Span m = spans[i++];
      while (i < spans.size() && spans[i].lo < m.hi) {
        m.hi = std::max(m.hi, spans[i].hi);
        m.name += "` / `" + spans[i++].name;
      }
      pydl_emu::track(reinterpret_cast<const void*>(m.lo), m.hi - m.lo, m.name.c_str());
      t.starts.push_back(reinterpret_cast<const void*>(m.lo));
    }
  }
  ~OpScope() {
    Tracking& t = tracking();
    if (--t.depth == 0) {
      for (const void* p : t.starts) pydl_emu::untrack(p);
      t.starts.clear();
      t.owner = std::thread::id();
    }
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  std::lock_guard<std::recursive_mutex> lock_;
};

// The argument names of `op`'s schema, for the reports ("arg i" if the schema cannot be found).
inline std::vector<std::string> arg_names(const std::string& op, size_t n) {
  std::vector<std::string> names;
  const auto h = c10::Dispatcher::singleton().findSchema({op, ""});
  if (h) for (const auto& a : h->schema().arguments()) names.push_back(a.name());
  for (size_t i = names.size(); i < n; ++i) names.push_back("arg " + std::to_string(i));
  return names;
}

template <typename R, typename... A>
auto tracked(std::string op, R (*fn)(A...)) {
  auto names = std::make_shared<std::vector<std::string>>();  // looked up at the first call (under the lock)
  return [op = std::move(op), fn, names](A... args) -> R {
    OpScope scope;
    if (names->empty()) *names = arg_names(op, sizeof...(A));
    std::vector<Span> spans;
    size_t i = 0;
    (add_spans(spans, args, (*names)[i++]), ...);
    scope.inputs(std::move(spans));
    return fn(std::forward<A>(args)...);
  };
}

// What `m` is inside TORCH_LIBRARY_IMPL below: torch::Library's impl(), with every kernel wrapped.
struct TrackingLibrary {
  torch::Library& lib;
  const char* ns;
  template <typename F>
  TrackingLibrary& impl(const char* name, F* fn) {
    lib.impl(name, tracked(std::string(ns) + "::" + name, fn));
    return *this;
  }
};

}  // namespace pydl_emu_glue

// torch's TORCH_LIBRARY_IMPL, with the body handed a TrackingLibrary instead of the torch::Library.
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, k, m) PYDL_EMU_LIBRARY_IMPL(ns, k, m, C10_UID)
#define PYDL_EMU_LIBRARY_IMPL(ns, k, m, uid)                                                                  \
  static void C10_CONCATENATE(PYDL_EMU_IMPL_init_##ns##_##k##_, uid)(pydl_emu_glue::TrackingLibrary&);        \
  static const torch::detail::TorchLibraryInit C10_CONCATENATE(PYDL_EMU_IMPL_static_init_##ns##_##k##_, uid)( \
      torch::Library::IMPL,                                                                                   \
      [](torch::Library& lib) {                                                                               \
        pydl_emu_glue::TrackingLibrary wrapped{lib, C10_STRINGIZE(ns)};                                      \
        C10_CONCATENATE(PYDL_EMU_IMPL_init_##ns##_##k##_, uid)(wrapped);                                      \
      },                                                                                                      \
      C10_STRINGIZE(ns), std::make_optional(c10::DispatchKey::k), __FILE__, __LINE__);                        \
  void C10_CONCATENATE(PYDL_EMU_IMPL_init_##ns##_##k##_, uid)(pydl_emu_glue::TrackingLibrary & m)

#define pydl_cuda pydl_cuda_emu
#define CUDA CPU
