// Embedding kernels: the token (and position) embedding lookup and its
// deterministic scatter-add gradient.
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

__global__ void EmbeddingForwardKernel(float* out, const int32_t* ids,
                                       const int32_t* pos, const float* wte,
                                       const float* wpe, int C) {
  const size_t n = blockIdx.x;
  const float* t = wte + static_cast<size_t>(ids[n]) * C;
  const float* p =
      wpe != nullptr ? wpe + static_cast<size_t>(pos[n]) * C : nullptr;
  float* o = out + n * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    o[c] = p != nullptr ? t[c] + p[c] : t[c];
  }
}

__global__ void BucketAccumulateKernel(float* grad, const float* dout,
                                       const int32_t* rows, const int32_t* keys,
                                       const int32_t* begin, int C) {
  const int b = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float* g = grad + static_cast<size_t>(keys[b]) * C + c;
  // Row by row into the gradient itself, as the reference adds them.
  float acc = *g;
  for (int i = begin[b]; i < begin[b + 1]; ++i) {
    acc += dout[static_cast<size_t>(rows[i]) * C + c];
  }
  *g = acc;
}

}  // namespace

cudaError_t EmbeddingForward(cudaStream_t stream, float* out,
                             const int32_t* ids, const int32_t* pos,
                             const float* wte, const float* wpe, int N, int C) {
  PREFOPT_LAUNCH(EmbeddingForwardKernel, N, kThreads, 0, stream)
  (out, ids, pos, wte, wpe, C);
  return cudaGetLastError();
}

cudaError_t BucketAccumulate(cudaStream_t stream, float* grad,
                             const float* dout, const int32_t* rows,
                             const int32_t* keys, const int32_t* begin,
                             int num_buckets, int C) {
  const dim3 grid(num_buckets, CeilDiv(C, kThreads));
  PREFOPT_LAUNCH(BucketAccumulateKernel, grid, kThreads, 0, stream)
  (grad, dout, rows, keys, begin, C);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
