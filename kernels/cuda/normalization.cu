// Normalization kernels: LayerNorm and RmsNorm forward and input gradient
// (one warp per row), and the deterministic column sums for their
// parameter gradients and bias gradients.
#include <algorithm>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

constexpr int kRowsPerBlock = kThreads / 32;

__global__ void LayerNormForwardKernel(float* out, float* mean, float* rstd,
                                       const float* inp, const float* weight,
                                       const float* bias, int N, int C,
                                       float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += 32) sum += x[c];
  const float mu = __fdiv_rn(WarpSum(sum), static_cast<float>(C));
  float sq = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float d = x[c] - mu;
    sq += d * d;
  }
  // Biased variance, eps inside the square root (torch.nn.LayerNorm).
  const float rs =
      __frsqrt_rn(__fdiv_rn(WarpSum(sq), static_cast<float>(C)) + eps);
  float* o = out + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) {
    const float y = (x[c] - mu) * rs * weight[c];
    o[c] = bias != nullptr ? y + bias[c] : y;
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

__global__ void LayerNormBackwardInputKernel(float* dinp, const float* dout,
                                             const float* inp,
                                             const float* weight,
                                             const float* mean,
                                             const float* rstd, int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  const float* d = dout + static_cast<size_t>(row) * C;
  const float mu = mean[row], rs = rstd[row];
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight.
  float g_sum = 0.0f, g_xhat_sum = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float g = d[c] * weight[c];
    g_sum += g;
    g_xhat_sum += g * ((x[c] - mu) * rs);
  }
  const float g_mean = __fdiv_rn(WarpSum(g_sum), static_cast<float>(C));
  const float g_xhat_mean =
      __fdiv_rn(WarpSum(g_xhat_sum), static_cast<float>(C));
  float* dx = dinp + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) {
    const float xhat = (x[c] - mu) * rs;
    dx[c] += rs * (d[c] * weight[c] - g_mean - xhat * g_xhat_mean);
  }
}

__global__ void RowMeansKernel(float* out, const float* in, int N, int width,
                               int stride) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = in + static_cast<size_t>(row) * stride;
  float sum = 0.0f;
  for (int c = lane; c < width; c += 32) sum += x[c];
  const double total = WarpSum(static_cast<double>(sum));
  if (lane == 0) out[row] = static_cast<float>(total / width);
}

__global__ void RmsNormForwardKernel(float* out, float* rstd, const float* inp,
                                     const float* weight, int N, int C,
                                     float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float sq = 0.0f;
  for (int c = lane; c < C; c += 32) sq += x[c] * x[c];
  const float rs =
      __frsqrt_rn(__fdiv_rn(WarpSum(sq), static_cast<float>(C)) + eps);
  float* o = out + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) o[c] = x[c] * rs * weight[c];
  if (lane == 0) rstd[row] = rs;
}

__global__ void RmsNormBackwardInputKernel(float* dinp, const float* dout,
                                           const float* inp,
                                           const float* weight,
                                           const float* rstd, int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  const float* d = dout + static_cast<size_t>(row) * C;
  const float rs = rstd[row];
  // dx = rs * g - x * rs^3 * mean(g * x), g = dout * weight.
  float g_x_sum = 0.0f;
  for (int c = lane; c < C; c += 32) g_x_sum += d[c] * weight[c] * x[c];
  const float coef =
      rs * rs * rs * __fdiv_rn(WarpSum(g_x_sum), static_cast<float>(C));
  float* dx = dinp + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) {
    dx[c] += rs * (d[c] * weight[c]) - x[c] * coef;
  }
}

// Column sums: blocks of 32 columns x 8 row lanes over one row slice.
constexpr int kColumnLanes = 8;
constexpr int kMaxColumnSlices = 128;

template <ColumnGradient kKind>
__global__ void ColumnPartialsKernel(float* part0, float* part1,
                                     const float* dout, const float* inp,
                                     const float* mean, const float* rstd,
                                     int N, int C, int rows_per_slice) {
  __shared__ float s0[kColumnLanes][33];
  __shared__ float s1[kColumnLanes][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * 32 + tx;
  const int slice = blockIdx.y;
  const int r0 = slice * rows_per_slice;
  const int r1 = min(N, r0 + rows_per_slice);
  float a0 = 0.0f, a1 = 0.0f;
  if (c < C) {
    for (int n = r0 + ty; n < r1; n += kColumnLanes) {
      const size_t i = static_cast<size_t>(n) * C + c;
      const float d = dout[i];
      if constexpr (kKind == ColumnGradient::kLayerNorm) {
        a0 += d * ((inp[i] - mean[n]) * rstd[n]);
        a1 += d;
      } else if constexpr (kKind == ColumnGradient::kRmsNorm) {
        a0 += d * inp[i] * rstd[n];
      } else {
        a1 += d;
      }
    }
  }
  s0[ty][tx] = a0;
  s1[ty][tx] = a1;
  __syncthreads();
  if (ty == 0 && c < C) {
    float t0 = 0.0f, t1 = 0.0f;
    for (int y = 0; y < kColumnLanes; ++y) {
      t0 += s0[y][tx];
      t1 += s1[y][tx];
    }
    part0[static_cast<size_t>(slice) * C + c] = t0;
    part1[static_cast<size_t>(slice) * C + c] = t1;
  }
}

__global__ void ColumnFinishKernel(float* out0, float* out1, const float* part0,
                                   const float* part1, int slices, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  if (out0 != nullptr) {
    float acc = 0.0f;
    for (int s = 0; s < slices; ++s)
      acc += part0[static_cast<size_t>(s) * C + c];
    out0[c] += acc;
  }
  if (out1 != nullptr) {
    float acc = 0.0f;
    for (int s = 0; s < slices; ++s)
      acc += part1[static_cast<size_t>(s) * C + c];
    out1[c] += acc;
  }
}

}  // namespace

cudaError_t LayerNormForward(cudaStream_t stream, float* out, float* mean,
                             float* rstd, const float* inp, const float* weight,
                             const float* bias, int N, int C, float eps) {
  PREFOPT_LAUNCH(LayerNormForwardKernel, CeilDiv(N, kRowsPerBlock), kThreads, 0,
                 stream)
  (out, mean, rstd, inp, weight, bias, N, C, eps);
  return cudaGetLastError();
}

cudaError_t LayerNormBackwardInput(cudaStream_t stream, float* dinp,
                                   const float* dout, const float* inp,
                                   const float* weight, const float* mean,
                                   const float* rstd, int N, int C) {
  PREFOPT_LAUNCH(LayerNormBackwardInputKernel, CeilDiv(N, kRowsPerBlock),
                 kThreads, 0, stream)
  (dinp, dout, inp, weight, mean, rstd, N, C);
  return cudaGetLastError();
}

cudaError_t RowMeans(cudaStream_t stream, float* out, const float* in, int N,
                     int width, int stride) {
  PREFOPT_LAUNCH(RowMeansKernel, CeilDiv(N, kRowsPerBlock), kThreads, 0, stream)
  (out, in, N, width, stride);
  return cudaGetLastError();
}

cudaError_t RmsNormForward(cudaStream_t stream, float* out, float* rstd,
                           const float* inp, const float* weight, int N, int C,
                           float eps) {
  PREFOPT_LAUNCH(RmsNormForwardKernel, CeilDiv(N, kRowsPerBlock), kThreads, 0,
                 stream)
  (out, rstd, inp, weight, N, C, eps);
  return cudaGetLastError();
}

cudaError_t RmsNormBackwardInput(cudaStream_t stream, float* dinp,
                                 const float* dout, const float* inp,
                                 const float* weight, const float* rstd, int N,
                                 int C) {
  PREFOPT_LAUNCH(RmsNormBackwardInputKernel, CeilDiv(N, kRowsPerBlock),
                 kThreads, 0, stream)
  (dinp, dout, inp, weight, rstd, N, C);
  return cudaGetLastError();
}

int ColumnSlices(int N) {
  return std::max(1, std::min(CeilDiv(N, 32), kMaxColumnSlices));
}

cudaError_t ColumnGradients(cudaStream_t stream, ColumnGradient kind,
                            float* out0, float* out1, const float* dout,
                            const float* inp, const float* mean,
                            const float* rstd, int N, int C, float* partials) {
  const int slices = ColumnSlices(N);
  const int rows_per_slice = CeilDiv(N, slices);
  float* part0 = partials;
  float* part1 = partials + static_cast<size_t>(slices) * C;
  const dim3 grid(CeilDiv(C, 32), slices);
  const dim3 block(32, kColumnLanes);
  switch (kind) {
    case ColumnGradient::kLayerNorm:
      PREFOPT_LAUNCH(ColumnPartialsKernel<ColumnGradient::kLayerNorm>, grid,
                     block, 0, stream)
      (part0, part1, dout, inp, mean, rstd, N, C, rows_per_slice);
      break;
    case ColumnGradient::kRmsNorm:
      PREFOPT_LAUNCH(ColumnPartialsKernel<ColumnGradient::kRmsNorm>, grid,
                     block, 0, stream)
      (part0, part1, dout, inp, mean, rstd, N, C, rows_per_slice);
      break;
    case ColumnGradient::kBias:
      PREFOPT_LAUNCH(ColumnPartialsKernel<ColumnGradient::kBias>, grid, block,
                     0, stream)
      (part0, part1, dout, inp, mean, rstd, N, C, rows_per_slice);
      break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  PREFOPT_LAUNCH(ColumnFinishKernel, CeilDiv(C, kThreads), kThreads, 0, stream)
  (out0, out1, part0, part1, slices, C);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
