// Test-case I/O for the CUDA exercises' checker (pydl/learn/cuda.py). The same code runs on a GPU (real
// cudaMalloc/cudaMemcpy) and in the CPU emulation (csrc/emu/cuda_emu.h provides those functions).
//
// A case is a folder: one raw binary file per array argument (the whole guarded buffer: PYDL_GUARD poisoned
// elements, the data, PYDL_GUARD more) and scalars.txt with "name value" lines. The learner's launcher gets
// a pointer GUARD elements into each device buffer; afterwards every non-const array is written back whole,
// guards included, so the checker sees stray writes.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifndef PYDL_GUARD
#define PYDL_GUARD 64
#endif

namespace pydl_io {

inline void die(const std::string& msg, int code = 2) {
  std::fprintf(stderr, "harness: %s\n", msg.c_str());
  std::exit(code);
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA error after %s: %s\n", what, cudaGetErrorString(err));
    std::exit(4);
  }
}

template <typename T>
struct Array {
  std::string path;
  std::vector<T> host;
  T* dev = nullptr;
  T* ptr() { return dev + PYDL_GUARD; }
  void write_back() {
    check(cudaMemcpy(host.data(), dev, host.size() * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy back");
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) die("cannot write " + path);
    std::fwrite(host.data(), sizeof(T), host.size(), f);
    std::fclose(f);
  }
};

struct Case {
  std::string dir;
  explicit Case(const char* d) : dir(d) {}

  template <typename T>
  Array<T> array(const char* name) {
    Array<T> a;
    a.path = dir + "/" + name + ".bin";
    FILE* f = std::fopen(a.path.c_str(), "rb");
    if (!f) die("cannot read " + a.path);
    std::fseek(f, 0, SEEK_END);
    long bytes = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    a.host.resize(size_t(bytes) / sizeof(T));
    if (std::fread(a.host.data(), sizeof(T), a.host.size(), f) != a.host.size()) die("short read " + a.path);
    std::fclose(f);
    check(cudaMalloc(reinterpret_cast<void**>(&a.dev), a.host.size() * sizeof(T)), "cudaMalloc");
    check(cudaMemcpy(a.dev, a.host.data(), a.host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
#ifdef PYDL_CUDA_EMU
    // For the emulator's memcheck the learner's buffer is the elements between the guards: a kernel that
    // touches a guard is reported with its source line, not only noticed afterwards by the poison.
    if (a.host.size() > 2 * size_t(PYDL_GUARD)) {
      pydl_emu::untrack(a.dev);
      pydl_emu::track(a.ptr(), (a.host.size() - 2 * size_t(PYDL_GUARD)) * sizeof(T), name);
    }
#endif
    return a;
  }

  template <typename T>
  T scalar(const char* name) {
    std::string p = dir + "/scalars.txt";
    FILE* f = std::fopen(p.c_str(), "r");
    if (!f) die("cannot read " + p);
    char key[128];
    double v;
    while (std::fscanf(f, "%127s %lf", key, &v) == 2) {
      if (std::strcmp(key, name) == 0) {
        std::fclose(f);
        return T(v);
      }
    }
    std::fclose(f);
    die(std::string("no scalar ") + name);
    return T();
  }
};

}  // namespace pydl_io
