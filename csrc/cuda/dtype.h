// The storage dtype a CUDA launcher is told its tensors have. One enum for every op: the glue maps torch's
// dtype onto it once (to_dtype in cuda/common_cuda.h), the kernels map it onto a C++ type once
// (PYDL_DTYPE_SWITCH in cuda/acc.h). Plain C++: both sides of the torch-free line include it.
#pragma once

namespace pydl {
namespace cuda {

enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2, kDouble = 3 };

}  // namespace cuda
}  // namespace pydl
