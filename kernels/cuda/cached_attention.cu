// Cached attention for incremental decoding: one block per (new row, query
// head), fp32 throughout.
#include <cmath>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

// Block reduction of one value per thread (kThreads of them) through
// `shared` (kThreads / 32 floats); every thread gets the result.
template <typename Op>
__device__ float BlockReduce(float v, float* shared, Op op) {
  for (int o = 16; o > 0; o >>= 1) {
    v = op(v, __shfl_xor_sync(kFullMask, v, o));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = shared[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, shared[w]);
  return v;
}

// One block per (new row i, query head h): scores against keys
// [0, past + i], softmax, and the weighted sum of the values, in fp32.
__global__ void CachedAttentionKernel(float* out, float* scores,
                                      const float* qkv, int past, int n, int NH,
                                      int NKV, int hs) {
  __shared__ float reduce[kThreads / 32];
  const int i = blockIdx.x, h = blockIdx.y;
  const int g = h / (NH / NKV);
  const int T = past + n, seen = past + i + 1;
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  const float* q = qkv + (past + i) * row + static_cast<size_t>(h) * hs;
  const float* k = qkv + static_cast<size_t>(NH + g) * hs;
  const float* v = qkv + static_cast<size_t>(NH + NKV + g) * hs;
  float* s = scores + (static_cast<size_t>(i) * NH + h) * T;
  const float scale = __frsqrt_rn(static_cast<float>(hs));
  float local_max = -INFINITY;
  for (int j = threadIdx.x; j < seen; j += kThreads) {
    const float* kj = k + j * row;
    float dot = 0.0f;
    for (int d = 0; d < hs; ++d) dot = fmaf(q[d], kj[d], dot);
    s[j] = dot * scale;
    local_max = fmaxf(local_max, s[j]);
  }
  const float max_score = BlockReduce(
      local_max, reduce, [](float a, float b) { return fmaxf(a, b); });
  float local_sum = 0.0f;
  for (int j = threadIdx.x; j < seen; j += kThreads) {
    s[j] = exp2f((s[j] - max_score) * kLog2e);
    local_sum += s[j];
  }
  const float inv_sum = __frcp_rn(
      BlockReduce(local_sum, reduce, [](float a, float b) { return a + b; }));
  __syncthreads();  // every s[j] is written before any thread reads them all
  float* o =
      out + static_cast<size_t>(i) * NH * hs + static_cast<size_t>(h) * hs;
  for (int d = threadIdx.x; d < hs; d += kThreads) {
    float acc = 0.0f;
    for (int j = 0; j < seen; ++j) acc = fmaf(s[j], v[j * row + d], acc);
    o[d] = acc * inv_sum;
  }
}

}  // namespace

cudaError_t CachedAttentionForward(cudaStream_t stream, float* out,
                                   float* scores, const float* qkv, int past,
                                   int n, int NH, int NKV, int hs) {
  if (n == 0) return cudaSuccess;
  const dim3 grid(n, NH);
  PREFOPT_LAUNCH(CachedAttentionKernel, grid, kThreads, 0, stream)
  (out, scores, qkv, past, n, NH, NKV, hs);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
