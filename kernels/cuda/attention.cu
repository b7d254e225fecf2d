// Attention kernels.
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
#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

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
  PREFOPT_DYNAMIC_SHARED(unsigned char, smem);
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
  PREFOPT_DYNAMIC_SHARED(unsigned char, smem);
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
  PREFOPT_DYNAMIC_SHARED(unsigned char, smem);
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
  PREFOPT_LAUNCH(kernel, grid, kAttnThreads, smem, stream)(args...);
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

}  // namespace

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

}  // namespace prefopt::kernels::cuda
