// Optimizer kernels: the deterministic sum of squares (for gradient-norm
// clipping) and the AdamW step.
#include <algorithm>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

constexpr int kSumThreads = 256;

__device__ double BlockSum(double v, double* shared) {
  v = WarpSum(v);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x < 32) {
    total = threadIdx.x < blockDim.x / 32 ? shared[threadIdx.x] : 0.0;
    total = WarpSum(total);
  }
  return total;
}

__global__ void __launch_bounds__(kSumThreads)
    SumSquaresPartialKernel(double* partials, const float* x, size_t n) {
  __shared__ double shared[kSumThreads / 32];
  double acc = 0.0;
  PREFOPT_GRID_STRIDE(i, n) {
    const double v = x[i];
    acc += v * v;
  }
  acc = BlockSum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(1024)
    SumSquaresFinalKernel(double* result, const double* partials, int count) {
  __shared__ double shared[32];
  const double v =
      static_cast<int>(threadIdx.x) < count ? partials[threadIdx.x] : 0.0;
  const double total = BlockSum(v, shared);
  if (threadIdx.x == 0) *result = total;
}

__global__ void AdamWKernel(float* p, const float* grad, float* m, float* v,
                            size_t n, AdamWFactors f) {
  PREFOPT_GRID_STRIDE(i, n) {
    const float g = grad[i];
    const float pi = __fmul_rn(p[i], f.decay);
    const float mi =
        __fadd_rn(m[i], __fmul_rn(f.one_minus_beta1, __fadd_rn(g, -m[i])));
    const float vi = __fadd_rn(__fmul_rn(v[i], f.beta2),
                               __fmul_rn(__fmul_rn(f.one_minus_beta2, g), g));
    const float denom =
        __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), f.bias_correction2_sqrt), f.eps);
    p[i] = __fadd_rn(pi, -__fmul_rn(f.step_size, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

int SumSquaresBlocks(size_t n) {
  return std::max(1, std::min(CeilDiv(n, kSumThreads * 16), 1024));
}

cudaError_t SumSquares(cudaStream_t stream, double* result, double* partials,
                       const float* x, size_t n) {
  const int blocks = SumSquaresBlocks(n);
  PREFOPT_LAUNCH(SumSquaresPartialKernel, blocks, kSumThreads, 0, stream)
  (partials, x, n);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  PREFOPT_LAUNCH(SumSquaresFinalKernel, 1, 1024, 0, stream)
  (result, partials, blocks);
  return cudaGetLastError();
}

cudaError_t AdamW(cudaStream_t stream, float* p, const float* grad, float* m,
                  float* v, size_t n, const AdamWFactors& f) {
  PREFOPT_LAUNCH(AdamWKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (p, grad, m, v, n, f);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
