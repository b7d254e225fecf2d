// CUDA kernels of CudaBackend (declared in cuda_kernels.h).
//
// Precision: the kernels read and write fp32 tensors (the bf16 operand copies
// for GEMMs and the output layer's bf16 dz aside) and accumulate in fp32
// (SumSquares in double). The build compiles with --use_fast_math, so exp,
// log and division default to the hardware approximations; where an op is
// held to the fp32 reference at 1e-5 the code says which operation it wants:
// exp through exp2f (ex2.approx, about 2 ulp), correctly rounded sqrt and
// division (__fsqrt_rn, __fdiv_rn, __frcp_rn, __frsqrt_rn), and, where the CPU
// reference's exact sequence of roundings is cheap to mirror (Axpy, AdamW),
// __fmul_rn/__fadd_rn, which the compiler never fuses into an FMA.
//
// Determinism: no kernel uses floating-point atomics; each output element is
// written by one thread whose summation order is fixed by the launch shape,
// and every launch shape is a function of the problem size alone.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/cuda_kernels.h"

namespace prefopt::kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

constexpr int kThreads = 256;  // elementwise and per-row kernels
constexpr unsigned kFullMask = 0xffffffffu;

int CeilDiv(size_t a, size_t b) { return static_cast<int>((a + b - 1) / b); }

// Blocks for a grid-stride loop over n elements: enough to fill any GPU,
// capped so the index arithmetic stays in range.
int ElementwiseBlocks(size_t n) {
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

// ---------------------------------------------------------------------------
// Embeddings

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

// ---------------------------------------------------------------------------
// Normalization: one warp per row.

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

__global__ void AddBiasKernel(float* out, const float* bias, int OC, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
       i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] += bias[i % OC];
  }
}

// ---------------------------------------------------------------------------
// Elementwise

#define PREFOPT_GRID_STRIDE(i, n)                                             \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; \
       i < (n); i += static_cast<size_t>(gridDim.x) * blockDim.x)

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

// ---------------------------------------------------------------------------
// Rotary position embedding: one thread per (row, head, pair).

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

// ---------------------------------------------------------------------------
// Attention.
//
// Flash-attention-2 structure (Dao 2023) over packed variable-length
// sequences; the T x T score matrix exists only one tile at a time in shared
// memory.
// - Forward: a block owns one query tile of one head (grid: tiles x NH) and
//   walks the key tiles up to the diagonal, keeping the running row max and
//   row sum (online softmax, in base 2) and the output accumulator in
//   registers; it saves only the row logsumexp.
// - Backward recomputes the probabilities from the logsumexp. D = rowsum(dO .
//   O) comes from the forward kernel run again in "D mode" (the interface
//   does not hand the output to the backward). Then a dK/dV kernel owns one
//   key tile of one KV head (grid: tiles x NKV) and walks, for each of the KV
//   head's query heads in order, the query tiles from the diagonal on; a dQ
//   kernel owns one query tile of one head and walks the key tiles. Each
//   output element has one owner, so there are no atomics and the result is
//   bitwise reproducible, at the cost of computing S and dP twice.
// - Threads: 256 as a 16 x 16 grid; thread (ty, tx) owns rows ty + 16 i of a
//   tile and head-dim columns tx + 16 j of every register accumulator.
// - fp32 mode: all products on CUDA cores from fp32 shared-memory tiles.
//   bf16 mode: tiles are stored as bf16 and the four kinds of tile product
//   run on tensor cores through WMMA (bf16 in, fp32 accumulate); products
//   whose result is added to a register accumulator are staged through a
//   shared fp32 tile. Softmax, row statistics and accumulators stay fp32.

constexpr int kAttnThreads = 256;
constexpr int kAttnWarps = kAttnThreads / 32;

template <bool kBf16>
using Elem = std::conditional_t<kBf16, __nv_bfloat16, float>;

__host__ __device__ constexpr size_t Align128(size_t x) {
  return (x + 127) & ~size_t{127};
}

__host__ __device__ constexpr int RoundUp16(int x) {
  return (x + 15) / 16 * 16;
}

// Shared-memory layout of one attention block; offsets in bytes.
struct AttnSmem {
  int dp;    // head dim as stored (bf16: padded to a multiple of 16)
  int ld_t;  // elements per row of the Q/K/V/dO tiles
  int ld_s;  // floats per row of the score tiles
  int ld_p;  // bf16 per row of the P/dS tensor-core copies
  int ld_o;  // floats per row of the staging tile
  size_t q, k, v, dout, s, dp_tile, p16, ds16, stage, rows, total;
};

__host__ __device__ inline AttnSmem AttnLayout(int tile_rows, bool bf16, int hs,
                                               bool backward) {
  AttnSmem L{};
  // fp32: one float of padding keeps the column walks of the score product
  // free of bank conflicts. bf16: WMMA wants rows that are 16-byte multiples.
  L.dp = bf16 ? RoundUp16(hs) : hs;
  L.ld_t = bf16 ? L.dp + 8 : hs + 1;
  L.ld_s = tile_rows + 4;
  L.ld_p = tile_rows + 8;
  L.ld_o = L.dp + 4;
  const size_t elem = bf16 ? 2 : 4;
  const size_t tile = Align128(tile_rows * L.ld_t * elem);
  const size_t scores = Align128(tile_rows * L.ld_s * sizeof(float));
  const size_t p16 = Align128(tile_rows * L.ld_p * 2);
  size_t off = 0;
  L.q = off;
  off += tile;
  L.k = off;
  off += tile;
  L.v = off;
  off += tile;
  L.dout = off;
  if (backward) off += tile;
  L.s = off;
  off += scores;
  L.dp_tile = off;
  if (backward) off += scores;
  L.p16 = L.ds16 = L.stage = off;
  if (bf16) {
    L.p16 = off;
    off += p16;
    L.ds16 = off;
    if (backward) off += p16;
    L.stage = off;
    off += Align128(tile_rows * L.ld_o * sizeof(float));
  }
  L.rows = off;
  off += Align128(3 * tile_rows * sizeof(float));
  L.total = off;
  return L;
}

template <bool kBf16>
__device__ __forceinline__ Elem<kBf16> FromFloat(float x) {
  if constexpr (kBf16) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

// dst[r][d] = src[r * stride + d] for r < rows, d < hs; zero elsewhere in the
// tile_rows x dp block.
template <int kB, bool kBf16>
__device__ void LoadTile(Elem<kBf16>* dst, int ld, const float* src,
                         size_t stride, int rows, int hs, int dp) {
  for (int idx = threadIdx.x; idx < kB * dp; idx += kAttnThreads) {
    const int r = idx / dp, d = idx - r * dp;
    const float x = (r < rows && d < hs) ? src[r * stride + d] : 0.0f;
    dst[r * ld + d] = FromFloat<kBf16>(x);
  }
}

// S[r][c] = scale * sum_d A[r][d] B[c][d] over a kB x kB tile.
template <int kB, bool kBf16>
__device__ void ScoresNT(float* S, int ld_s, const Elem<kBf16>* A,
                         const Elem<kBf16>* B, int ld_t, int hs, int dp,
                         float scale) {
  if constexpr (kBf16) {
    using namespace nvcuda;
    constexpr int kT = kB / 16;
    for (int t = threadIdx.x / 32; t < kT * kT; t += kAttnWarps) {
      const int tr = t / kT, tc = t % kT;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < dp; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16,
                       wmma::row_major>
            a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16,
                       wmma::col_major>
            b;
        wmma::load_matrix_sync(a, A + tr * 16 * ld_t + kk, ld_t);
        wmma::load_matrix_sync(b, B + tc * 16 * ld_t + kk, ld_t);
        wmma::mma_sync(acc, a, b, acc);
      }
      for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= scale;
      wmma::store_matrix_sync(S + tr * 16 * ld_s + tc * 16, acc, ld_s,
                              wmma::mem_row_major);
    }
  } else {
    constexpr int kR = kB / 16;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    float acc[kR][kR] = {};
#pragma unroll 4
    for (int d = 0; d < hs; ++d) {
      float a[kR], b[kR];
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        a[i] = A[(ty + 16 * i) * ld_t + d];
        b[i] = B[(tx + 16 * i) * ld_t + d];
      }
#pragma unroll
      for (int i = 0; i < kR; ++i) {
#pragma unroll
        for (int j = 0; j < kR; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < kR; ++i) {
#pragma unroll
      for (int j = 0; j < kR; ++j) {
        S[(ty + 16 * i) * ld_s + tx + 16 * j] = acc[i][j] * scale;
      }
    }
  }
}

// Adds a tensor-core product staged in `stage` (kB x dp floats) to the
// register accumulator, scaling the accumulator by alpha[row] first when
// alpha is non-null. Ends with a barrier: the stage is reused next.
template <int kB, int kJ>
__device__ void AddStage(float (&acc)[kB / 16][kJ], const float* stage,
                         int ld_o, int dp, const float* alpha) {
  __syncthreads();
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < kB / 16; ++i) {
    const int r = ty + 16 * i;
    const float a = alpha != nullptr ? alpha[r] : 1.0f;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int col = tx + 16 * j;
      if (col < dp) acc[i][j] = acc[i][j] * a + stage[r * ld_o + col];
    }
  }
  __syncthreads();
}

// acc[i][j] = acc[i][j] * alpha[r_i] + sum_c P[r_i][c] B[c][col_j]
// (alpha null: no scaling). P is the fp32 tile (fp32 mode) or its bf16 copy.
template <int kB, int kJ, bool kBf16>
__device__ void AccumNN(float (&acc)[kB / 16][kJ], const float* P, int ld_s,
                        const __nv_bfloat16* P16, int ld_p,
                        const Elem<kBf16>* B, int ld_t, int hs, int dp,
                        const float* alpha, float* stage, int ld_o) {
  if constexpr (kBf16) {
    using namespace nvcuda;
    constexpr int kT = kB / 16;
    const int kD = dp / 16;
    for (int t = threadIdx.x / 32; t < kT * kD; t += kAttnWarps) {
      const int tr = t / kD, tc = t % kD;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::fill_fragment(c, 0.0f);
      for (int kk = 0; kk < kB; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16,
                       wmma::row_major>
            a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16,
                       wmma::row_major>
            b;
        wmma::load_matrix_sync(a, P16 + tr * 16 * ld_p + kk, ld_p);
        wmma::load_matrix_sync(b, B + kk * ld_t + tc * 16, ld_t);
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(stage + tr * 16 * ld_o + tc * 16, c, ld_o,
                              wmma::mem_row_major);
    }
    AddStage<kB, kJ>(acc, stage, ld_o, dp, alpha);
  } else {
    constexpr int kR = kB / 16;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    if (alpha != nullptr) {
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        const float a = alpha[ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kJ; ++j) acc[i][j] *= a;
      }
    }
    // Columns past hs read a valid element and are never stored.
    int cols[kJ];
#pragma unroll
    for (int j = 0; j < kJ; ++j) cols[j] = min(tx + 16 * j, hs - 1);
#pragma unroll 2
    for (int c = 0; c < kB; ++c) {
      float p[kR], b[kJ];
#pragma unroll
      for (int i = 0; i < kR; ++i) p[i] = P[(ty + 16 * i) * ld_s + c];
#pragma unroll
      for (int j = 0; j < kJ; ++j) b[j] = B[c * ld_t + cols[j]];
#pragma unroll
      for (int i = 0; i < kR; ++i) {
#pragma unroll
        for (int j = 0; j < kJ; ++j) acc[i][j] = fmaf(p[i], b[j], acc[i][j]);
      }
    }
  }
}

// acc[i][j] += sum_r P[r][c_i] B[r][col_j], c_i = ty + 16 i: the product with
// P transposed (dV += P^T dO, dK += dS^T Q).
template <int kB, int kJ, bool kBf16>
__device__ void AccumTN(float (&acc)[kB / 16][kJ], const float* P, int ld_s,
                        const __nv_bfloat16* P16, int ld_p,
                        const Elem<kBf16>* B, int ld_t, int hs, int dp,
                        float* stage, int ld_o) {
  if constexpr (kBf16) {
    using namespace nvcuda;
    constexpr int kT = kB / 16;
    const int kD = dp / 16;
    for (int t = threadIdx.x / 32; t < kT * kD; t += kAttnWarps) {
      const int tr = t / kD, tc = t % kD;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::fill_fragment(c, 0.0f);
      for (int kk = 0; kk < kB; kk += 16) {
        // P^T[m][k] = P[k][m]: P read column-major.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16,
                       wmma::col_major>
            a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16,
                       wmma::row_major>
            b;
        wmma::load_matrix_sync(a, P16 + kk * ld_p + tr * 16, ld_p);
        wmma::load_matrix_sync(b, B + kk * ld_t + tc * 16, ld_t);
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(stage + tr * 16 * ld_o + tc * 16, c, ld_o,
                              wmma::mem_row_major);
    }
    AddStage<kB, kJ>(acc, stage, ld_o, dp, nullptr);
  } else {
    constexpr int kR = kB / 16;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    int cols[kJ];
#pragma unroll
    for (int j = 0; j < kJ; ++j) cols[j] = min(tx + 16 * j, hs - 1);
#pragma unroll 2
    for (int r = 0; r < kB; ++r) {
      float p[kR], b[kJ];
#pragma unroll
      for (int i = 0; i < kR; ++i) p[i] = P[r * ld_s + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kJ; ++j) b[j] = B[r * ld_t + cols[j]];
#pragma unroll
      for (int i = 0; i < kR; ++i) {
#pragma unroll
        for (int j = 0; j < kJ; ++j) acc[i][j] = fmaf(p[i], b[j], acc[i][j]);
      }
    }
  }
}

// One online-softmax step over a kB x kB score tile (base-2 scores): masks
// keys after the query (causal), updates the running max m and sum l, writes
// P = 2^(s - m) in place (and its bf16 copy) and alpha = 2^(m_old - m_new).
// Key 0 is never masked, so m is finite from the first tile on; padding rows
// past the sequence see only zero keys and stay finite too.
template <int kB, bool kBf16>
__device__ void OnlineSoftmax(float* S, int ld_s, __nv_bfloat16* P16, int ld_p,
                              float* row_m, float* row_l, float* row_alpha,
                              int q0, int k0) {
  constexpr int kC = kB / 32;
  const int lane = threadIdx.x % 32;
  for (int r = threadIdx.x / 32; r < kB; r += kAttnWarps) {
    float s[kC];
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kC; ++t) {
      const int c = lane + 32 * t;
      s[t] = k0 + c <= q0 + r ? S[r * ld_s + c] : -INFINITY;
      mx = fmaxf(mx, s[t]);
    }
    mx = WarpMax(mx);
    const float m_old = row_m[r];
    const float m_new = fmaxf(m_old, mx);
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < kC; ++t) {
      s[t] = exp2f(s[t] - m_new);
      sum += s[t];
    }
    sum = WarpSum(sum);
#pragma unroll
    for (int t = 0; t < kC; ++t) {
      const int c = lane + 32 * t;
      if constexpr (kBf16) {
        P16[r * ld_p + c] = __float2bfloat16_rn(s[t]);
      } else {
        S[r * ld_s + c] = s[t];
      }
    }
    if (lane == 0) {
      const float alpha = exp2f(m_old - m_new);
      row_alpha[r] = alpha;
      row_l[r] = row_l[r] * alpha + sum;
      row_m[r] = m_new;
    }
  }
}

// Backward's elementwise step: P = 2^(s - lse2) and dS = P (dP - D) * scale
// on the valid (causal, in-sequence) entries, zero elsewhere. fp32 mode
// writes them over S and dP, bf16 mode into the bf16 copies.
template <int kB, bool kBf16>
__device__ void SoftmaxGrad(float* S, float* dP, int ld_s, __nv_bfloat16* P16,
                            __nv_bfloat16* dS16, int ld_p,
                            const float* row_lse2, const float* row_d, int q0,
                            int k0, int len, float scale) {
  for (int idx = threadIdx.x; idx < kB * kB; idx += kAttnThreads) {
    const int r = idx / kB, c = idx % kB;
    const bool valid = q0 + r < len && k0 + c <= q0 + r;
    const float p = valid ? exp2f(S[r * ld_s + c] - row_lse2[r]) : 0.0f;
    const float ds = valid ? p * (dP[r * ld_s + c] - row_d[r]) * scale : 0.0f;
    if constexpr (kBf16) {
      P16[r * ld_p + c] = __float2bfloat16_rn(p);
      dS16[r * ld_p + c] = __float2bfloat16_rn(ds);
    } else {
      S[r * ld_s + c] = p;
      dP[r * ld_s + c] = ds;
    }
  }
}

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

struct AttnShape {
  int NH, NKV, hs;
  __device__ size_t Row() const {
    return static_cast<size_t>(NH + 2 * NKV) * hs;
  }
};

template <int kB, int kJ, bool kBf16>
__global__ void __launch_bounds__(kAttnThreads)
    AttnForwardKernel(float* out, float* lse, const float* dout, float* dsum,
                      const float* qkv, const AttentionTile* tiles,
                      AttnShape shape) {
  extern __shared__ __align__(128) unsigned char smem[];
  const AttnSmem L = AttnLayout(kB, kBf16, shape.hs, false);
  auto* Qs = reinterpret_cast<Elem<kBf16>*>(smem + L.q);
  auto* Ks = reinterpret_cast<Elem<kBf16>*>(smem + L.k);
  auto* Vs = reinterpret_cast<Elem<kBf16>*>(smem + L.v);
  auto* S = reinterpret_cast<float*>(smem + L.s);
  auto* P16 = reinterpret_cast<__nv_bfloat16*>(smem + L.p16);
  auto* stage = reinterpret_cast<float*>(smem + L.stage);
  float* row_m = reinterpret_cast<float*>(smem + L.rows);
  float* row_l = row_m + kB;
  float* row_alpha = row_l + kB;

  const AttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int g = h / (shape.NH / shape.NKV);
  const int hs = shape.hs, dp = L.dp;
  const size_t row = shape.Row();
  const float* base = qkv + static_cast<size_t>(tile.seq_start) * row;
  const int q0 = tile.tile_start, len = tile.seq_len;
  const float scale_log2 = __frsqrt_rn(static_cast<float>(hs)) * kLog2e;

  LoadTile<kB, kBf16>(Qs, L.ld_t, base + q0 * row + h * hs, row, len - q0, hs,
                      dp);
  for (int r = threadIdx.x; r < kB; r += kAttnThreads) {
    row_m[r] = -INFINITY;
    row_l[r] = 0.0f;
  }
  float acc[kB / 16][kJ] = {};
  const int num_k_tiles = q0 / kB + 1;
  for (int kt = 0; kt < num_k_tiles; ++kt) {
    const int k0 = kt * kB;
    __syncthreads();
    LoadTile<kB, kBf16>(Ks, L.ld_t, base + k0 * row + (shape.NH + g) * hs, row,
                        len - k0, hs, dp);
    LoadTile<kB, kBf16>(Vs, L.ld_t,
                        base + k0 * row + (shape.NH + shape.NKV + g) * hs, row,
                        len - k0, hs, dp);
    __syncthreads();
    ScoresNT<kB, kBf16>(S, L.ld_s, Qs, Ks, L.ld_t, hs, dp, scale_log2);
    __syncthreads();
    OnlineSoftmax<kB, kBf16>(S, L.ld_s, P16, L.ld_p, row_m, row_l, row_alpha,
                             q0, k0);
    __syncthreads();
    AccumNN<kB, kJ, kBf16>(acc, S, L.ld_s, P16, L.ld_p, Vs, L.ld_t, hs, dp,
                           row_alpha, stage, L.ld_o);
  }
  __syncthreads();

  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const size_t out_row = static_cast<size_t>(shape.NH) * hs;
#pragma unroll
  for (int i = 0; i < kB / 16; ++i) {
    const int r = ty + 16 * i;
    const bool valid = q0 + r < len;
    const size_t n = static_cast<size_t>(tile.seq_start) + q0 + r;
    const float inv_l = __frcp_rn(row_l[r]);
    if (dout == nullptr) {
      if (valid) {
        float* o = out + n * out_row + static_cast<size_t>(h) * hs;
#pragma unroll
        for (int j = 0; j < kJ; ++j) {
          const int col = tx + 16 * j;
          if (col < hs) o[col] = acc[i][j] * inv_l;
        }
      }
    } else {
      // D = dO . O over the 16 threads (a half-warp) that share the row.
      float part = 0.0f;
      if (valid) {
        const float* d = dout + n * out_row + static_cast<size_t>(h) * hs;
#pragma unroll
        for (int j = 0; j < kJ; ++j) {
          const int col = tx + 16 * j;
          if (col < hs) part += d[col] * (acc[i][j] * inv_l);
        }
      }
      for (int o = 8; o > 0; o >>= 1) {
        part += __shfl_xor_sync(kFullMask, part, o);
      }
      if (valid && tx == 0) dsum[n * shape.NH + h] = part;
    }
  }
  if (dout == nullptr) {
    for (int r = threadIdx.x; r < kB; r += kAttnThreads) {
      if (q0 + r < len) {
        const size_t n = static_cast<size_t>(tile.seq_start) + q0 + r;
        lse[n * shape.NH + h] = (row_m[r] + log2f(row_l[r])) * kLn2;
      }
    }
  }
}

// Loads the query-side tiles of one (query tile, head): Q, dO, and per row
// lse (in base 2) and D, zero past the sequence.
template <int kB, bool kBf16>
__device__ void LoadQuerySide(Elem<kBf16>* Qs, Elem<kBf16>* dOs,
                              float* row_lse2, float* row_d, const AttnSmem& L,
                              const float* qkv, const float* dout,
                              const float* lse, const float* dsum,
                              const AttentionTile& tile, int q0, int h,
                              const AttnShape& shape) {
  const size_t row = shape.Row();
  const size_t out_row = static_cast<size_t>(shape.NH) * shape.hs;
  const size_t first = static_cast<size_t>(tile.seq_start) + q0;
  const int rows = tile.seq_len - q0;
  LoadTile<kB, kBf16>(Qs, L.ld_t, qkv + first * row + h * shape.hs, row, rows,
                      shape.hs, L.dp);
  LoadTile<kB, kBf16>(dOs, L.ld_t, dout + first * out_row + h * shape.hs,
                      out_row, rows, shape.hs, L.dp);
  for (int r = threadIdx.x; r < kB; r += kAttnThreads) {
    const bool valid = r < rows;
    const size_t i = (first + r) * shape.NH + h;
    row_lse2[r] = valid ? lse[i] * kLog2e : 0.0f;
    row_d[r] = valid ? dsum[i] : 0.0f;
  }
}

template <int kB, int kJ, bool kBf16>
__global__ void __launch_bounds__(kAttnThreads)
    AttnBackwardKVKernel(float* dqkv, const float* dout, const float* qkv,
                         const float* lse, const float* dsum,
                         const AttentionTile* tiles, AttnShape shape) {
  extern __shared__ __align__(128) unsigned char smem[];
  const AttnSmem L = AttnLayout(kB, kBf16, shape.hs, true);
  auto* Qs = reinterpret_cast<Elem<kBf16>*>(smem + L.q);
  auto* Ks = reinterpret_cast<Elem<kBf16>*>(smem + L.k);
  auto* Vs = reinterpret_cast<Elem<kBf16>*>(smem + L.v);
  auto* dOs = reinterpret_cast<Elem<kBf16>*>(smem + L.dout);
  auto* S = reinterpret_cast<float*>(smem + L.s);
  auto* dP = reinterpret_cast<float*>(smem + L.dp_tile);
  auto* P16 = reinterpret_cast<__nv_bfloat16*>(smem + L.p16);
  auto* dS16 = reinterpret_cast<__nv_bfloat16*>(smem + L.ds16);
  auto* stage = reinterpret_cast<float*>(smem + L.stage);
  float* row_lse2 = reinterpret_cast<float*>(smem + L.rows);
  float* row_d = row_lse2 + kB;

  const AttentionTile tile = tiles[blockIdx.x];
  const int g = blockIdx.y;
  const int group = shape.NH / shape.NKV;
  const int hs = shape.hs, dp = L.dp;
  const size_t row = shape.Row();
  const int k0 = tile.tile_start, len = tile.seq_len;
  const size_t first_key = static_cast<size_t>(tile.seq_start) + k0;
  const float scale = __frsqrt_rn(static_cast<float>(hs));
  const float scale_log2 = scale * kLog2e;

  LoadTile<kB, kBf16>(Ks, L.ld_t, qkv + first_key * row + (shape.NH + g) * hs,
                      row, len - k0, hs, dp);
  LoadTile<kB, kBf16>(Vs, L.ld_t,
                      qkv + first_key * row + (shape.NH + shape.NKV + g) * hs,
                      row, len - k0, hs, dp);
  float dk[kB / 16][kJ] = {};
  float dv[kB / 16][kJ] = {};
  const int num_q_tiles = (len + kB - 1) / kB;
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int qt = k0 / kB; qt < num_q_tiles; ++qt) {
      const int q0 = qt * kB;
      __syncthreads();
      LoadQuerySide<kB, kBf16>(Qs, dOs, row_lse2, row_d, L, qkv, dout, lse,
                               dsum, tile, q0, h, shape);
      __syncthreads();
      ScoresNT<kB, kBf16>(S, L.ld_s, Qs, Ks, L.ld_t, hs, dp, scale_log2);
      ScoresNT<kB, kBf16>(dP, L.ld_s, dOs, Vs, L.ld_t, hs, dp, 1.0f);
      __syncthreads();
      SoftmaxGrad<kB, kBf16>(S, dP, L.ld_s, P16, dS16, L.ld_p, row_lse2, row_d,
                             q0, k0, len, scale);
      __syncthreads();
      AccumTN<kB, kJ, kBf16>(dv, S, L.ld_s, P16, L.ld_p, dOs, L.ld_t, hs, dp,
                             stage, L.ld_o);
      AccumTN<kB, kJ, kBf16>(dk, dP, L.ld_s, dS16, L.ld_p, Qs, L.ld_t, hs, dp,
                             stage, L.ld_o);
    }
  }

  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < kB / 16; ++i) {
    const int r = ty + 16 * i;
    if (k0 + r >= len) continue;
    float* k_grad = dqkv + (first_key + r) * row + (shape.NH + g) * hs;
    float* v_grad = k_grad + static_cast<size_t>(shape.NKV) * hs;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int col = tx + 16 * j;
      if (col < hs) {
        k_grad[col] += dk[i][j];
        v_grad[col] += dv[i][j];
      }
    }
  }
}

template <int kB, int kJ, bool kBf16>
__global__ void __launch_bounds__(kAttnThreads)
    AttnBackwardQKernel(float* dqkv, const float* dout, const float* qkv,
                        const float* lse, const float* dsum,
                        const AttentionTile* tiles, AttnShape shape) {
  extern __shared__ __align__(128) unsigned char smem[];
  const AttnSmem L = AttnLayout(kB, kBf16, shape.hs, true);
  auto* Qs = reinterpret_cast<Elem<kBf16>*>(smem + L.q);
  auto* Ks = reinterpret_cast<Elem<kBf16>*>(smem + L.k);
  auto* Vs = reinterpret_cast<Elem<kBf16>*>(smem + L.v);
  auto* dOs = reinterpret_cast<Elem<kBf16>*>(smem + L.dout);
  auto* S = reinterpret_cast<float*>(smem + L.s);
  auto* dP = reinterpret_cast<float*>(smem + L.dp_tile);
  auto* P16 = reinterpret_cast<__nv_bfloat16*>(smem + L.p16);
  auto* dS16 = reinterpret_cast<__nv_bfloat16*>(smem + L.ds16);
  auto* stage = reinterpret_cast<float*>(smem + L.stage);
  float* row_lse2 = reinterpret_cast<float*>(smem + L.rows);
  float* row_d = row_lse2 + kB;

  const AttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int g = h / (shape.NH / shape.NKV);
  const int hs = shape.hs, dp = L.dp;
  const size_t row = shape.Row();
  const int q0 = tile.tile_start, len = tile.seq_len;
  const float* base = qkv + static_cast<size_t>(tile.seq_start) * row;
  const float scale = __frsqrt_rn(static_cast<float>(hs));
  const float scale_log2 = scale * kLog2e;

  LoadQuerySide<kB, kBf16>(Qs, dOs, row_lse2, row_d, L, qkv, dout, lse, dsum,
                           tile, q0, h, shape);
  float dq[kB / 16][kJ] = {};
  const int num_k_tiles = q0 / kB + 1;
  for (int kt = 0; kt < num_k_tiles; ++kt) {
    const int k0 = kt * kB;
    __syncthreads();
    LoadTile<kB, kBf16>(Ks, L.ld_t, base + k0 * row + (shape.NH + g) * hs, row,
                        len - k0, hs, dp);
    LoadTile<kB, kBf16>(Vs, L.ld_t,
                        base + k0 * row + (shape.NH + shape.NKV + g) * hs, row,
                        len - k0, hs, dp);
    __syncthreads();
    ScoresNT<kB, kBf16>(S, L.ld_s, Qs, Ks, L.ld_t, hs, dp, scale_log2);
    ScoresNT<kB, kBf16>(dP, L.ld_s, dOs, Vs, L.ld_t, hs, dp, 1.0f);
    __syncthreads();
    SoftmaxGrad<kB, kBf16>(S, dP, L.ld_s, P16, dS16, L.ld_p, row_lse2, row_d,
                           q0, k0, len, scale);
    __syncthreads();
    AccumNN<kB, kJ, kBf16>(dq, dP, L.ld_s, dS16, L.ld_p, Ks, L.ld_t, hs, dp,
                           nullptr, stage, L.ld_o);
  }

  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < kB / 16; ++i) {
    const int r = ty + 16 * i;
    if (q0 + r >= len) continue;
    float* q_grad = dqkv +
                    (static_cast<size_t>(tile.seq_start) + q0 + r) * row +
                    static_cast<size_t>(h) * hs;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int col = tx + 16 * j;
      if (col < hs) q_grad[col] += dq[i][j];
    }
  }
}

// Raises a kernel's dynamic shared-memory limit to what it needs (above the
// 48 KiB default) and launches it.
template <typename Kernel, typename... Args>
cudaError_t LaunchAttn(Kernel kernel, dim3 grid, size_t smem,
                       cudaStream_t stream, Args... args) {
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kAttnThreads, smem, stream>>>(args...);
  return cudaGetLastError();
}

// Calls f with the tile rows and register columns for hs as template
// arguments: <64, 4> up to 64, <64, 8> up to 128, <32, 16> up to 256.
template <typename F>
cudaError_t DispatchHeadSize(int hs, F&& f) {
  if (hs <= 64)
    return f(std::integral_constant<int, 64>{},
             std::integral_constant<int, 4>{});
  if (hs <= 128)
    return f(std::integral_constant<int, 64>{},
             std::integral_constant<int, 8>{});
  if (hs <= kMaxAttentionHeadSize) {
    return f(std::integral_constant<int, 32>{},
             std::integral_constant<int, 16>{});
  }
  return cudaErrorInvalidValue;
}

// ---------------------------------------------------------------------------
// Chunked output layer: one block per row.

constexpr int kOutputThreads = 512;

struct RowStat {
  float max;
  int arg;
  float sumexp;  // sum of exp(z - max)
  double sum;    // sum of z
};

__device__ __forceinline__ RowStat Combine(const RowStat& a, const RowStat& b) {
  RowStat r;
  r.max = fmaxf(a.max, b.max);
  // A side with no elements (max = -inf) contributes sumexp 0 and must not
  // turn into -inf - -inf = NaN.
  const float sa = a.max == r.max ? 1.0f : exp2f((a.max - r.max) * kLog2e);
  const float sb = b.max == r.max ? 1.0f : exp2f((b.max - r.max) * kLog2e);
  r.sumexp = a.sumexp * sa + b.sumexp * sb;
  r.arg = a.max > b.max ? a.arg : (b.max > a.max ? b.arg : min(a.arg, b.arg));
  r.sum = a.sum + b.sum;
  return r;
}

__device__ RowStat ShuffleXor(const RowStat& s, int o) {
  RowStat r;
  r.max = __shfl_xor_sync(kFullMask, s.max, o);
  r.arg = __shfl_xor_sync(kFullMask, s.arg, o);
  r.sumexp = __shfl_xor_sync(kFullMask, s.sumexp, o);
  r.sum = __shfl_xor_sync(kFullMask, s.sum, o);
  return r;
}

__global__ void __launch_bounds__(kOutputThreads)
    OutputRowStatsKernel(float* lse, float* logp, float* logit_sum,
                         int32_t* correct, const float* logits,
                         const int32_t* labels, int V) {
  __shared__ RowStat warp_stats[kOutputThreads / 32];
  const int r = blockIdx.x;
  const float* z = logits + static_cast<size_t>(r) * V;
  // Each thread scans its columns in increasing order: a strict > keeps the
  // first index of equal maxima, as torch.argmax does.
  RowStat s{-INFINITY, INT_MAX, 0.0f, 0.0};
  for (int v = threadIdx.x; v < V; v += kOutputThreads) {
    const float x = z[v];
    s.sum += x;
    if (x > s.max) {
      s.sumexp = s.sumexp * exp2f((s.max - x) * kLog2e) + 1.0f;
      s.max = x;
      s.arg = v;
    } else {
      s.sumexp += exp2f((x - s.max) * kLog2e);
    }
  }
  for (int o = 16; o > 0; o >>= 1) s = Combine(s, ShuffleXor(s, o));
  if (threadIdx.x % 32 == 0) warp_stats[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    RowStat t = warp_stats[0];
    for (int w = 1; w < kOutputThreads / 32; ++w) t = Combine(t, warp_stats[w]);
    const float l = t.max + logf(t.sumexp);
    const int32_t label = labels[r];
    lse[r] = l;
    logp[r] = z[label] - l;
    logit_sum[r] = static_cast<float>(t.sum);
    correct[r] = t.arg == label ? 1 : 0;
  }
}

template <bool kBf16>
__global__ void __launch_bounds__(kOutputThreads)
    OutputRowGradKernel(float* logits, const int32_t* labels, const float* lse,
                        const float* coef, int V) {
  const int r = blockIdx.x;
  float* z = logits + static_cast<size_t>(r) * V;
  const float c = coef[r], l = lse[r];
  const int label = labels[r];
  if constexpr (kBf16) {
    // In place: bf16 element v occupies bytes [2v, 2v + 2), inside the fp32
    // elements already read (index <= v). Each pass reads its fp32 values
    // before the barrier and writes bf16 after it.
    auto* out = reinterpret_cast<__nv_bfloat16*>(z);
    for (int base = 0; base < V; base += kOutputThreads) {
      const int v = base + threadIdx.x;
      float g = 0.0f;
      if (v < V && c != 0.0f) {
        g = c * (exp2f((z[v] - l) * kLog2e) - (v == label ? 1.0f : 0.0f));
      }
      __syncthreads();
      if (v < V) out[v] = __float2bfloat16_rn(g);
    }
  } else {
    for (int v = threadIdx.x; v < V; v += kOutputThreads) {
      z[v] = c != 0.0f
                 ? c * (exp2f((z[v] - l) * kLog2e) - (v == label ? 1.0f : 0.0f))
                 : 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------
// Optimizer

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
  const double v = threadIdx.x < count ? partials[threadIdx.x] : 0.0;
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

// ---------------------------------------------------------------------------
// Launchers

cudaError_t EmbeddingForward(cudaStream_t stream, float* out,
                             const int32_t* ids, const int32_t* pos,
                             const float* wte, const float* wpe, int N, int C) {
  EmbeddingForwardKernel<<<N, kThreads, 0, stream>>>(out, ids, pos, wte, wpe,
                                                     C);
  return cudaGetLastError();
}

cudaError_t BucketAccumulate(cudaStream_t stream, float* grad,
                             const float* dout, const int32_t* rows,
                             const int32_t* keys, const int32_t* begin,
                             int num_buckets, int C) {
  const dim3 grid(num_buckets, CeilDiv(C, kThreads));
  BucketAccumulateKernel<<<grid, kThreads, 0, stream>>>(grad, dout, rows, keys,
                                                        begin, C);
  return cudaGetLastError();
}

cudaError_t LayerNormForward(cudaStream_t stream, float* out, float* mean,
                             float* rstd, const float* inp, const float* weight,
                             const float* bias, int N, int C, float eps) {
  LayerNormForwardKernel<<<CeilDiv(N, kRowsPerBlock), kThreads, 0, stream>>>(
      out, mean, rstd, inp, weight, bias, N, C, eps);
  return cudaGetLastError();
}

cudaError_t LayerNormBackwardInput(cudaStream_t stream, float* dinp,
                                   const float* dout, const float* inp,
                                   const float* weight, const float* mean,
                                   const float* rstd, int N, int C) {
  LayerNormBackwardInputKernel<<<CeilDiv(N, kRowsPerBlock), kThreads, 0,
                                 stream>>>(dinp, dout, inp, weight, mean, rstd,
                                           N, C);
  return cudaGetLastError();
}

cudaError_t RmsNormForward(cudaStream_t stream, float* out, float* rstd,
                           const float* inp, const float* weight, int N, int C,
                           float eps) {
  RmsNormForwardKernel<<<CeilDiv(N, kRowsPerBlock), kThreads, 0, stream>>>(
      out, rstd, inp, weight, N, C, eps);
  return cudaGetLastError();
}

cudaError_t RmsNormBackwardInput(cudaStream_t stream, float* dinp,
                                 const float* dout, const float* inp,
                                 const float* weight, const float* rstd, int N,
                                 int C) {
  RmsNormBackwardInputKernel<<<CeilDiv(N, kRowsPerBlock), kThreads, 0,
                               stream>>>(dinp, dout, inp, weight, rstd, N, C);
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
      ColumnPartialsKernel<ColumnGradient::kLayerNorm>
          <<<grid, block, 0, stream>>>(part0, part1, dout, inp, mean, rstd, N,
                                       C, rows_per_slice);
      break;
    case ColumnGradient::kRmsNorm:
      ColumnPartialsKernel<ColumnGradient::kRmsNorm>
          <<<grid, block, 0, stream>>>(part0, part1, dout, inp, mean, rstd, N,
                                       C, rows_per_slice);
      break;
    case ColumnGradient::kBias:
      ColumnPartialsKernel<ColumnGradient::kBias><<<grid, block, 0, stream>>>(
          part0, part1, dout, inp, mean, rstd, N, C, rows_per_slice);
      break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  ColumnFinishKernel<<<CeilDiv(C, kThreads), kThreads, 0, stream>>>(
      out0, out1, part0, part1, slices, C);
  return cudaGetLastError();
}

cudaError_t AddBias(cudaStream_t stream, float* out, const float* bias, int N,
                    int OC) {
  const size_t n = static_cast<size_t>(N) * OC;
  AddBiasKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(out, bias, OC,
                                                               n);
  return cudaGetLastError();
}

cudaError_t GeluForward(cudaStream_t stream, float* out, const float* inp,
                        size_t n) {
  GeluForwardKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(out, inp, n);
  return cudaGetLastError();
}

cudaError_t GeluBackward(cudaStream_t stream, float* dinp, const float* inp,
                         const float* dout, size_t n) {
  GeluBackwardKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(dinp, inp,
                                                                    dout, n);
  return cudaGetLastError();
}

cudaError_t SwiGluForward(cudaStream_t stream, float* out, const float* gate_up,
                          int N, int FF) {
  const size_t n = static_cast<size_t>(N) * FF;
  SwiGluForwardKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(
      out, gate_up, FF, n);
  return cudaGetLastError();
}

cudaError_t SwiGluBackward(cudaStream_t stream, float* dgate_up,
                           const float* gate_up, const float* dout, int N,
                           int FF) {
  const size_t n = static_cast<size_t>(N) * FF;
  SwiGluBackwardKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(
      dgate_up, gate_up, dout, FF, n);
  return cudaGetLastError();
}

cudaError_t Add(cudaStream_t stream, float* out, const float* a, const float* b,
                size_t n) {
  AddKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(out, a, b, n);
  return cudaGetLastError();
}

cudaError_t Axpy(cudaStream_t stream, float* y, float alpha, const float* x,
                 size_t n) {
  AxpyKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(y, alpha, x, n);
  return cudaGetLastError();
}

cudaError_t Scale(cudaStream_t stream, float* x, float alpha, size_t n) {
  ScaleKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(x, alpha, n);
  return cudaGetLastError();
}

cudaError_t ToBf16(cudaStream_t stream, void* dst, const float* src, size_t n) {
  auto* out = static_cast<__nv_bfloat16*>(dst);
  // Pairs need 8-byte-aligned fp32 input and 4-byte-aligned bf16 output.
  if (reinterpret_cast<uintptr_t>(src) % 8 == 0 &&
      reinterpret_cast<uintptr_t>(dst) % 4 == 0) {
    ToBf16Kernel<<<ElementwiseBlocks(n / 2 + 1), kThreads, 0, stream>>>(out,
                                                                        src, n);
  } else {
    ToBf16ScalarKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(out, src,
                                                                      n);
  }
  return cudaGetLastError();
}

cudaError_t RopeRotate(cudaStream_t stream, float* qkv, const int32_t* pos,
                       const float* cos, const float* sin, int N, int NH,
                       int NKV, int hs, float sign) {
  const int heads = NH + NKV;  // queries then keys: contiguous in a row
  const size_t n = static_cast<size_t>(N) * heads * (hs / 2);
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  RopeKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(
      qkv, pos, cos, sin, heads, hs, row, sign, n);
  return cudaGetLastError();
}

int AttentionTileRows(int hs) { return hs <= 128 ? 64 : 32; }

size_t AttentionSmemBytes(bool bf16, int hs, bool backward) {
  return AttnLayout(AttentionTileRows(hs), bf16, hs, backward).total;
}

cudaError_t AttentionForward(cudaStream_t stream, bool bf16, float* out,
                             float* lse, const float* dout, float* dsum,
                             const float* qkv, const AttentionTile* q_tiles,
                             int num_q_tiles, int NH, int NKV, int hs) {
  if (num_q_tiles == 0) return cudaSuccess;
  const AttnShape shape{NH, NKV, hs};
  const dim3 grid(num_q_tiles, NH);
  return DispatchHeadSize(hs, [&](auto b, auto j) {
    constexpr int kB = decltype(b)::value, kJ = decltype(j)::value;
    const size_t smem = AttnLayout(kB, bf16, hs, false).total;
    return bf16 ? LaunchAttn(AttnForwardKernel<kB, kJ, true>, grid, smem,
                             stream, out, lse, dout, dsum, qkv, q_tiles, shape)
                : LaunchAttn(AttnForwardKernel<kB, kJ, false>, grid, smem,
                             stream, out, lse, dout, dsum, qkv, q_tiles, shape);
  });
}

cudaError_t CachedAttentionForward(cudaStream_t stream, float* out,
                                   float* scores, const float* qkv, int past,
                                   int n, int NH, int NKV, int hs) {
  if (n == 0) return cudaSuccess;
  const dim3 grid(n, NH);
  CachedAttentionKernel<<<grid, kThreads, 0, stream>>>(out, scores, qkv, past,
                                                       n, NH, NKV, hs);
  return cudaGetLastError();
}

cudaError_t AttentionBackward(cudaStream_t stream, bool bf16, float* dqkv,
                              const float* dout, const float* qkv,
                              const float* lse, const float* dsum,
                              const AttentionTile* q_tiles, int num_q_tiles,
                              const AttentionTile* k_tiles, int num_k_tiles,
                              int NH, int NKV, int hs) {
  if (num_q_tiles == 0) return cudaSuccess;
  const AttnShape shape{NH, NKV, hs};
  return DispatchHeadSize(hs, [&](auto b, auto j) {
    constexpr int kB = decltype(b)::value, kJ = decltype(j)::value;
    const size_t smem = AttnLayout(kB, bf16, hs, true).total;
    const dim3 kv_grid(num_k_tiles, NKV), q_grid(num_q_tiles, NH);
    cudaError_t err =
        bf16 ? LaunchAttn(AttnBackwardKVKernel<kB, kJ, true>, kv_grid, smem,
                          stream, dqkv, dout, qkv, lse, dsum, k_tiles, shape)
             : LaunchAttn(AttnBackwardKVKernel<kB, kJ, false>, kv_grid, smem,
                          stream, dqkv, dout, qkv, lse, dsum, k_tiles, shape);
    if (err != cudaSuccess) return err;
    err = bf16 ? LaunchAttn(AttnBackwardQKernel<kB, kJ, true>, q_grid, smem,
                            stream, dqkv, dout, qkv, lse, dsum, q_tiles, shape)
               : LaunchAttn(AttnBackwardQKernel<kB, kJ, false>, q_grid, smem,
                            stream, dqkv, dout, qkv, lse, dsum, q_tiles, shape);
    return err;
  });
}

cudaError_t OutputRowStats(cudaStream_t stream, float* lse, float* logp,
                           float* logit_sum, int32_t* correct,
                           const float* logits, const int32_t* labels, int rows,
                           int V) {
  OutputRowStatsKernel<<<rows, kOutputThreads, 0, stream>>>(
      lse, logp, logit_sum, correct, logits, labels, V);
  return cudaGetLastError();
}

cudaError_t OutputRowGrad(cudaStream_t stream, bool bf16, float* logits,
                          const int32_t* labels, const float* lse,
                          const float* coef, int rows, int V) {
  if (bf16) {
    OutputRowGradKernel<true>
        <<<rows, kOutputThreads, 0, stream>>>(logits, labels, lse, coef, V);
  } else {
    OutputRowGradKernel<false>
        <<<rows, kOutputThreads, 0, stream>>>(logits, labels, lse, coef, V);
  }
  return cudaGetLastError();
}

int SumSquaresBlocks(size_t n) {
  return std::max(1, std::min(CeilDiv(n, kSumThreads * 16), 1024));
}

cudaError_t SumSquares(cudaStream_t stream, double* result, double* partials,
                       const float* x, size_t n) {
  const int blocks = SumSquaresBlocks(n);
  SumSquaresPartialKernel<<<blocks, kSumThreads, 0, stream>>>(partials, x, n);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  SumSquaresFinalKernel<<<1, 1024, 0, stream>>>(result, partials, blocks);
  return cudaGetLastError();
}

cudaError_t AdamW(cudaStream_t stream, float* p, const float* grad, float* m,
                  float* v, size_t n, const AdamWFactors& f) {
  AdamWKernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(p, grad, m, v, n,
                                                             f);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
