// What several kernel families of //kernels/cuda share: constants, launch
// shapes of the elementwise and per-row kernels, warp reductions, the sigmoid
// and the grid-stride loop.
#ifndef PREFOPT_KERNELS_CUDA_DEVICE_COMMON_CUH_
#define PREFOPT_KERNELS_CUDA_DEVICE_COMMON_CUH_

#include <algorithm>
#include <cstddef>

#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kThreads = 256;  // elementwise and per-row kernels
constexpr unsigned kFullMask = 0xffffffffu;

inline int CeilDiv(size_t a, size_t b) {
  return static_cast<int>((a + b - 1) / b);
}

// Blocks for a grid-stride loop over n elements: enough to fill any GPU,
// capped so the index arithmetic stays in range.
inline int ElementwiseBlocks(size_t n) {
  return std::max(1, std::min(CeilDiv(n, kThreads), 1 << 20));
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ double WarpSum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  }
  return v;
}

// 1 / (1 + 2^(-y log2 e)) = sigmoid(y), with a correctly rounded reciprocal;
// 0 for very negative y (the reciprocal of infinity).
__device__ __forceinline__ float Sigmoid(float y) {
  return __frcp_rn(1.0f + exp2f(-y * kLog2e));
}

}  // namespace prefopt::kernels::cuda

// for (size_t i = ...; i < n; ...) over this thread's elements of a grid-stride
// loop.
#define PREFOPT_GRID_STRIDE(i, n)                                             \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; \
       i < (n); i += static_cast<size_t>(gridDim.x) * blockDim.x)

#endif  // PREFOPT_KERNELS_CUDA_DEVICE_COMMON_CUH_
