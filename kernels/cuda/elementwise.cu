// Elementwise kernels: GELU, SwiGLU, Add, Axpy, Scale, Multiply, the bf16
// conversions and the bias add.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

__global__ void AddBiasKernel(float* out, const float* bias, int OC, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
       i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] += bias[i % OC];
  }
}

// GELU (tanh form) as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3):
// 0.5 (1 + tanh(u)) = sigmoid(2u) without the cancellation of 1 + tanh(u) for
// negative x.
__global__ void GeluForwardKernel(float* out, const float* inp, size_t n) {
  PREFOPT_GRID_STRIDE(i, n) {
    const float x = inp[i];
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    out[i] = x * Sigmoid(2.0f * u);
  }
}

__global__ void GeluBackwardKernel(float* dinp, const float* inp,
                                   const float* dout, size_t n) {
  PREFOPT_GRID_STRIDE(i, n) {
    const float x = inp[i];
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    const float s = Sigmoid(2.0f * u);    // 0.5 (1 + tanh u)
    const float sm = Sigmoid(-2.0f * u);  // 0.5 (1 - tanh u)
    const float du_dx = kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
    // 0.5 x (1 - tanh^2 u) = 2 x s sm.
    dinp[i] += (s + 2.0f * x * s * sm * du_dx) * dout[i];
  }
}

__global__ void SwiGluForwardKernel(float* out, const float* gate_up, int FF,
                                    size_t n) {
  PREFOPT_GRID_STRIDE(i, n) {
    const size_t row = i / FF, j = i - row * FF;
    const float g = gate_up[row * 2 * FF + j];
    const float up = gate_up[row * 2 * FF + FF + j];
    out[i] = g * Sigmoid(g) * up;
  }
}

__global__ void SwiGluBackwardKernel(float* dgate_up, const float* gate_up,
                                     const float* dout, int FF, size_t n) {
  PREFOPT_GRID_STRIDE(i, n) {
    const size_t row = i / FF, j = i - row * FF;
    const size_t gi = row * 2 * FF + j;
    const float g = gate_up[gi], up = gate_up[gi + FF], d = dout[i];
    const float sig = Sigmoid(g);
    // silu'(g) = sig (1 + g (1 - sig)), with 1 - sig = sigmoid(-g).
    dgate_up[gi] += d * up * sig * (1.0f + g * Sigmoid(-g));
    dgate_up[gi + FF] += d * g * sig;
  }
}

__global__ void AddKernel(float* out, const float* a, const float* b,
                          size_t n) {
  PREFOPT_GRID_STRIDE(i, n) { out[i] = a[i] + b[i]; }
}

__global__ void AxpyKernel(float* y, float alpha, const float* x, size_t n) {
  PREFOPT_GRID_STRIDE(i, n) { y[i] = __fadd_rn(y[i], __fmul_rn(alpha, x[i])); }
}

__global__ void ScaleKernel(float* x, float alpha, size_t n) {
  PREFOPT_GRID_STRIDE(i, n) { x[i] *= alpha; }
}

__global__ void MultiplyKernel(float* out, const float* a, const float* b,
                               size_t n) {
  PREFOPT_GRID_STRIDE(i, n) { out[i] = __fmul_rn(a[i], b[i]); }
}

// Integer moves only: a float conversion could quiet a NaN's payload.
__global__ void WidenBf16Kernel(uint32_t* out, const uint16_t* in, size_t n) {
  PREFOPT_GRID_STRIDE(i, n) { out[i] = static_cast<uint32_t>(in[i]) << 16; }
}

__global__ void ToBf16Kernel(__nv_bfloat16* dst, const float* src, size_t n) {
  const size_t pairs = n / 2;
  PREFOPT_GRID_STRIDE(i, pairs) {
    const float2 v = reinterpret_cast<const float2*>(src)[i];
    reinterpret_cast<__nv_bfloat162*>(dst)[i] = __float22bfloat162_rn(v);
  }
  if (n % 2 == 1 && blockIdx.x == 0 && threadIdx.x == 0) {
    dst[n - 1] = __float2bfloat16_rn(src[n - 1]);
  }
}

__global__ void ToBf16ScalarKernel(__nv_bfloat16* dst, const float* src,
                                   size_t n) {
  PREFOPT_GRID_STRIDE(i, n) { dst[i] = __float2bfloat16_rn(src[i]); }
}

}  // namespace

cudaError_t AddBias(cudaStream_t stream, float* out, const float* bias, int N,
                    int OC) {
  const size_t n = static_cast<size_t>(N) * OC;
  PREFOPT_LAUNCH(AddBiasKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (out, bias, OC, n);
  return cudaGetLastError();
}

cudaError_t GeluForward(cudaStream_t stream, float* out, const float* inp,
                        size_t n) {
  PREFOPT_LAUNCH(GeluForwardKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (out, inp, n);
  return cudaGetLastError();
}

cudaError_t GeluBackward(cudaStream_t stream, float* dinp, const float* inp,
                         const float* dout, size_t n) {
  PREFOPT_LAUNCH(GeluBackwardKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (dinp, inp, dout, n);
  return cudaGetLastError();
}

cudaError_t SwiGluForward(cudaStream_t stream, float* out, const float* gate_up,
                          int N, int FF) {
  const size_t n = static_cast<size_t>(N) * FF;
  PREFOPT_LAUNCH(SwiGluForwardKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (out, gate_up, FF, n);
  return cudaGetLastError();
}

cudaError_t SwiGluBackward(cudaStream_t stream, float* dgate_up,
                           const float* gate_up, const float* dout, int N,
                           int FF) {
  const size_t n = static_cast<size_t>(N) * FF;
  PREFOPT_LAUNCH(SwiGluBackwardKernel, ElementwiseBlocks(n), kThreads, 0,
                 stream)
  (dgate_up, gate_up, dout, FF, n);
  return cudaGetLastError();
}

cudaError_t Add(cudaStream_t stream, float* out, const float* a, const float* b,
                size_t n) {
  PREFOPT_LAUNCH(AddKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (out, a, b, n);
  return cudaGetLastError();
}

cudaError_t Axpy(cudaStream_t stream, float* y, float alpha, const float* x,
                 size_t n) {
  PREFOPT_LAUNCH(AxpyKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (y, alpha, x, n);
  return cudaGetLastError();
}

cudaError_t Scale(cudaStream_t stream, float* x, float alpha, size_t n) {
  PREFOPT_LAUNCH(ScaleKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (x, alpha, n);
  return cudaGetLastError();
}

cudaError_t Multiply(cudaStream_t stream, float* out, const float* a,
                     const float* b, size_t n) {
  PREFOPT_LAUNCH(MultiplyKernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (out, a, b, n);
  return cudaGetLastError();
}

cudaError_t WidenBf16(cudaStream_t stream, float* out, const uint16_t* in,
                      size_t n) {
  PREFOPT_LAUNCH(WidenBf16Kernel, ElementwiseBlocks(n), kThreads, 0, stream)
  (reinterpret_cast<uint32_t*>(out), in, n);
  return cudaGetLastError();
}

cudaError_t ToBf16(cudaStream_t stream, void* dst, const float* src, size_t n) {
  auto* out = static_cast<__nv_bfloat16*>(dst);
  // Pairs need 8-byte-aligned fp32 input and 4-byte-aligned bf16 output.
  if (reinterpret_cast<uintptr_t>(src) % 8 == 0 &&
      reinterpret_cast<uintptr_t>(dst) % 4 == 0) {
    PREFOPT_LAUNCH(ToBf16Kernel, ElementwiseBlocks(n / 2 + 1), kThreads, 0,
                   stream)
    (out, src, n);
  } else {
    PREFOPT_LAUNCH(ToBf16ScalarKernel, ElementwiseBlocks(n), kThreads, 0,
                   stream)
    (out, src, n);
  }
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
