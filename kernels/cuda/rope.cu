// Rotary position embedding: one thread per (row, head, pair).
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

__global__ void RopeKernel(float* qkv, const int32_t* pos, const float* cos,
                           const float* sin, int heads, int hs, size_t row,
                           float sign, size_t n) {
  const int half = hs / 2;
  PREFOPT_GRID_STRIDE(i, n) {
    const size_t r = i / (static_cast<size_t>(heads) * half);
    const int rem = static_cast<int>(i - r * heads * half);
    const int head = rem / half, k = rem - head * half;
    const size_t t = static_cast<size_t>(pos[r]) * half + k;
    const float c = cos[t], s = sign * sin[t];
    float* x = qkv + r * row + static_cast<size_t>(head) * hs;
    const float x1 = x[k], x2 = x[k + half];
    x[k] = x1 * c - x2 * s;
    x[k + half] = x2 * c + x1 * s;
  }
}

}  // namespace

cudaError_t RopeRotate(cudaStream_t stream, float* qkv, const int32_t* pos,
                       const float* cos, const float* sin, int N, int NH,
                       int NKV, int hs, float sign) {
  const int heads = NH + NKV;  // queries then keys: contiguous in a row
  const size_t n = static_cast<size_t>(N) * heads * (hs / 2);
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  PREFOPT_LAUNCH(RopeKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (qkv, pos, cos, sin, heads, hs, row, sign, n);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
