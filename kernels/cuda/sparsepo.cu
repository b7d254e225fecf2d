// SparsePO's masks and pair objective on the device (docs/objectives.md §2,
// §7): the learned mask network's forward and backward, MaPO's rescaled
// activation masks, and the pair math of kernels/sparsepo_math.h. Every sum
// is reduced in a fixed order, so results are bitwise reproducible.
#include <cstddef>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/sparsepo_math.h"

namespace prefopt::kernels::cuda {
namespace {

using sparsepo_math::kResponseSumValues;
using sparsepo_math::ResponseSums;

constexpr int kWarps = kThreads / 32;

// Block-wide sums of every thread's v[0..count), written back to v in every
// thread (each thread adds the warps' partials in the same order).
template <int count>
__device__ void BlockSumAll(double* v) {
  __shared__ double partial[count][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < count; ++k) {
    const double s = WarpSum(v[k]);
    if (lane == 0) partial[k][warp] = s;
  }
  __syncthreads();
  for (int k = 0; k < count; ++k) {
    double s = 0;
    for (int w = 0; w < kWarps; ++w) s += partial[k][w];
    v[k] = s;
  }
  __syncthreads();
}

// Block-wide minimum of `lo` and maximum of `hi`, in every thread.
__device__ void BlockMinMax(double* lo, double* hi) {
  __shared__ double partial[2][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double a = *lo, b = *hi;
  for (int o = 16; o > 0; o >>= 1) {
    a = fmin(a, __shfl_xor_sync(kFullMask, a, o));
    b = fmax(b, __shfl_xor_sync(kFullMask, b, o));
  }
  if (lane == 0) {
    partial[0][warp] = a;
    partial[1][warp] = b;
  }
  __syncthreads();
  a = partial[0][0];
  b = partial[1][0];
  for (int w = 1; w < kWarps; ++w) {
    a = fmin(a, partial[0][w]);
    b = fmax(b, partial[1][w]);
  }
  *lo = a;
  *hi = b;
  __syncthreads();
}

// ---- the learned mask network ----

// The mask network's scratch, in doubles: the folded weights w_l γ [L, H] and
// offsets w_lᵀβ + b_l [L], per (layer, row) the pre-activation and the row's
// mean and 1/std [3, L, rows], per row the mixer's gradient [rows], and per
// layer X_l [L, H], dc [L] and db [L].
struct MaskScratch {
  double* folded_w;
  double* offset;
  double* stats;
  double* row_grad;
  double* x;
  double* dc;
  double* db;

  __host__ __device__ MaskScratch(double* base, int layers, int hidden,
                                  int rows) {
    const size_t LH = static_cast<size_t>(layers) * hidden;
    folded_w = base;
    offset = folded_w + LH;
    stats = offset + layers;
    row_grad = stats + 3 * static_cast<size_t>(layers) * rows;
    x = row_grad + rows;
    dc = x + LH;
    db = dc + layers;
  }
  static size_t Doubles(int layers, int hidden, int rows) {
    return 2 * static_cast<size_t>(layers) * hidden + 3 * layers +
           4 * static_cast<size_t>(layers) * rows + rows;
  }
};

// One block per layer: w_l γ and w_lᵀβ + b_l (LN(h) = x̂γ + β folds into the
// weights, so a = rstd · Σ_c (w_l γ)_c (h_c − μ) + w_lᵀβ + b_l).
__global__ void __launch_bounds__(kThreads)
    FoldKernel(MaskScratch s, const float* params, SparsePoMaskNetShape shape) {
  const int l = blockIdx.x, H = shape.hidden;
  const float* w = params + shape.w(l);
  const float* gamma = params + shape.ln_weight();
  const float* shift = params + shape.ln_bias();
  double o[1] = {0};
  for (int c = threadIdx.x; c < H; c += kThreads) {
    s.folded_w[static_cast<size_t>(l) * H + c] =
        static_cast<double>(w[c]) * gamma[c];
    o[0] += static_cast<double>(w[c]) * shift[c];
  }
  BlockSumAll<1>(o);
  if (threadIdx.x == 0) s.offset[l] = params[shape.b() + l] + o[0];
}

// One warp per (layer, row): the row's mean and 1/std, and the
// pre-activation, into stats[3 (l rows + t) ...].
__global__ void __launch_bounds__(kThreads)
    StatsKernel(MaskScratch s, const float* hidden, int rows,
                SparsePoMaskNetShape shape) {
  const int item = blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (item >= shape.layers * rows) return;
  const int l = item / rows, H = shape.hidden;
  const float* h = hidden + static_cast<size_t>(item) * H;
  double sum = 0;
  for (int c = lane; c < H; c += 32) sum += h[c];
  const double mean = WarpSum(sum) / H;
  const double* wl = s.folded_w + static_cast<size_t>(l) * H;
  double var = 0, dot = 0;
  for (int c = lane; c < H; c += 32) {
    const double d = h[c] - mean;
    var += d * d;
    dot += wl[c] * d;
  }
  var = WarpSum(var);
  dot = WarpSum(dot);
  if (lane == 0) {
    const double rstd = 1.0 / sqrt(var / H + shape.eps);
    double* out = s.stats + 3 * static_cast<size_t>(item);
    out[0] = rstd * dot + s.offset[l];
    out[1] = mean;
    out[2] = rstd;
  }
}

// Σ_l c_l ReLU(a_l) of row t (before the outer ReLU).
__device__ double Mixed(const MaskScratch& s, const float* c, int layers,
                        int rows, int t) {
  double m = 0;
  for (int l = 0; l < layers; ++l) {
    m += c[l] * fmax(0.0, s.stats[3 * (static_cast<size_t>(l) * rows + t)]);
  }
  return m;
}

__global__ void __launch_bounds__(kThreads)
    MaskKernel(float* mask, MaskScratch s, const float* params, int rows,
               SparsePoMaskNetShape shape) {
  PREFOPT_GRID_STRIDE(t, static_cast<size_t>(rows)) {
    mask[t] =
        static_cast<float>(fmax(0.0, Mixed(s, params + shape.c(), shape.layers,
                                           rows, static_cast<int>(t))));
  }
}

// ∂loss/∂(mixer output) per row: the outer ReLU passes dmask where positive.
__global__ void __launch_bounds__(kThreads)
    RowGradKernel(MaskScratch s, const float* dmask, const float* params,
                  int rows, SparsePoMaskNetShape shape) {
  PREFOPT_GRID_STRIDE(t, static_cast<size_t>(rows)) {
    s.row_grad[t] = Mixed(s, params + shape.c(), shape.layers, rows,
                          static_cast<int>(t)) > 0
                        ? dmask[t]
                        : 0.0;
  }
}

// One block per layer: dc_l = Σ_t g_t ReLU(a) and db_l = Σ_t g_t c_l 1[a > 0].
__global__ void __launch_bounds__(kThreads)
    LayerScalarsKernel(MaskScratch s, const float* params, int rows,
                       SparsePoMaskNetShape shape) {
  const int l = blockIdx.x;
  const double cl = params[shape.c() + l];
  double v[2] = {0, 0};
  for (int t = threadIdx.x; t < rows; t += kThreads) {
    const double a = s.stats[3 * (static_cast<size_t>(l) * rows + t)];
    const double g = s.row_grad[t];
    if (a <= 0 || g == 0) continue;
    v[0] += g * a;
    v[1] += g * cl;
  }
  BlockSumAll<2>(v);
  if (threadIdx.x == 0) {
    s.dc[l] = v[0];
    s.db[l] = v[1];
  }
}

// Grid (channel blocks, layers): X_l[c] = Σ_t da_t rstd_t (h_{t,c} − μ_t),
// da_t = g_t c_l 1[a > 0], each thread summing its channel over the rows in
// order.
__global__ void __launch_bounds__(kThreads)
    LayerInputSumsKernel(MaskScratch s, const float* hidden,
                         const float* params, int rows,
                         SparsePoMaskNetShape shape) {
  const int l = blockIdx.y, H = shape.hidden;
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= H) return;
  const double cl = params[shape.c() + l];
  double x = 0;
  for (int t = 0; t < rows; ++t) {
    const double* st = s.stats + 3 * (static_cast<size_t>(l) * rows + t);
    const double g = s.row_grad[t];
    if (st[0] <= 0 || g == 0) continue;
    const float* h = hidden + (static_cast<size_t>(l) * rows + t) * H;
    x += g * cl * st[2] * (h[c] - st[1]);
  }
  s.x[static_cast<size_t>(l) * H + c] = x;
}

// Per channel: ∂a/∂w = x̂γ + β, ∂a/∂γ = w x̂, ∂a/∂β = w, the shared
// LayerNorm summing over the layers in order; b and c from dc and db.
__global__ void __launch_bounds__(kThreads)
    ParamGradKernel(float* grads, MaskScratch s, const float* params,
                    SparsePoMaskNetShape shape) {
  const int H = shape.hidden, L = shape.layers;
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (blockIdx.x == 0 && static_cast<int>(threadIdx.x) < L) {
    grads[shape.b() + threadIdx.x] += static_cast<float>(s.db[threadIdx.x]);
    grads[shape.c() + threadIdx.x] += static_cast<float>(s.dc[threadIdx.x]);
  }
  if (c >= H) return;
  const float gamma = params[shape.ln_weight() + c];
  const float shift = params[shape.ln_bias() + c];
  double dgamma = 0, dshift = 0;
  for (int l = 0; l < L; ++l) {
    const float w = params[shape.w(l) + c];
    const double x = s.x[static_cast<size_t>(l) * H + c];
    grads[shape.w(l) + c] += static_cast<float>(gamma * x + shift * s.db[l]);
    dgamma += w * x;
    dshift += w * s.db[l];
  }
  grads[shape.ln_weight() + c] += static_cast<float>(dgamma);
  grads[shape.ln_bias() + c] += static_cast<float>(dshift);
}

cudaError_t PreActivations(cudaStream_t stream, const MaskScratch& s,
                           const float* hidden, int rows, const float* params,
                           const SparsePoMaskNetShape& shape) {
  PREFOPT_LAUNCH(FoldKernel, shape.layers, kThreads, 0, stream)
  (s, params, shape);
  PREFOPT_LAUNCH(StatsKernel,
                 CeilDiv(static_cast<size_t>(shape.layers) * rows, kWarps),
                 kThreads, 0, stream)
  (s, hidden, rows, shape);
  return cudaGetLastError();
}

// ---- MaPO ----

// One block per span: each selected group's maps rescaled over the span and
// averaged, the mask the mean over the groups. work holds two doubles per
// row (the running total and the group's sum), each thread owning its rows.
__global__ void __launch_bounds__(kThreads)
    MapoMaskKernel(float* mask, const float* scores, int rows,
                   const int32_t* map_groups, int num_maps,
                   const int32_t* groups, int num_groups, const SeqSpan* spans,
                   double* work) {
  const SeqSpan span = spans[blockIdx.x];
  double* total = work + span.start;
  double* group_sum = work + rows + span.start;
  for (int t = threadIdx.x; t < span.len; t += kThreads) total[t] = 0;
  for (int g = 0; g < num_groups; ++g) {
    for (int t = threadIdx.x; t < span.len; t += kThreads) group_sum[t] = 0;
    int count = 0;
    for (int i = 0; i < num_maps; ++i) {
      if (map_groups[i] != groups[g]) continue;
      const float* a = scores + static_cast<size_t>(i) * rows + span.start;
      bool ranked = false;
      double mean = 0, std_dev = 1, min = 0, range = 1;
      if (span.len >= 2) {
        double sum[1] = {0};
        for (int t = threadIdx.x; t < span.len; t += kThreads) sum[0] += a[t];
        BlockSumAll<1>(sum);
        mean = sum[0] / span.len;
        double squares[1] = {0};
        for (int t = threadIdx.x; t < span.len; t += kThreads) {
          squares[0] += (a[t] - mean) * (a[t] - mean);
        }
        BlockSumAll<1>(squares);
        if (sparsepo_math::MapoStdDev(squares[0], span.len, &std_dev)) {
          double lo = INFINITY, hi = -INFINITY;
          for (int t = threadIdx.x; t < span.len; t += kThreads) {
            const double z = (a[t] - mean) / std_dev;
            lo = fmin(lo, z);
            hi = fmax(hi, z);
          }
          BlockMinMax(&lo, &hi);
          ranked = sparsepo_math::MapoRange(lo, hi, &min, &range);
        }
      }
      for (int t = threadIdx.x; t < span.len; t += kThreads) {
        group_sum[t] += ranked ? ((a[t] - mean) / std_dev - min) / range : 1.0;
      }
      ++count;
    }
    if (count == 0) continue;
    for (int t = threadIdx.x; t < span.len; t += kThreads) {
      total[t] += group_sum[t] / count;
    }
  }
  for (int t = threadIdx.x; t < span.len; t += kThreads) {
    mask[span.start + t] = static_cast<float>(total[t] / num_groups);
  }
}

// ---- the pair objective ----

__device__ float MaskAt(const float* mask, int r) {
  return mask != nullptr ? mask[r] : 1.0f;
}

// One block per pair: both responses' sums, the pair's math (its metric
// values into pair_metrics[kSparsePoMetricCount i ...]) and every row's
// outputs.
__global__ void __launch_bounds__(kThreads)
    SparsePoPairKernel(SparsePoRowOutputs out, double* pair_metrics,
                       SparsePoRowInputs in, const SeqSpan* spans,
                       SparsePoParams params) {
  __shared__ double g_shared;
  const int pair = blockIdx.x;
  ResponseSums sums[2];
  for (int j = 0; j < 2; ++j) {
    const SeqSpan span = spans[2 * pair + j];
    for (int r = span.start + threadIdx.x; r < span.start + span.len;
         r += kThreads) {
      sparsepo_math::AddRow(params, in.logp[r], in.ref_logp[r], in.kl[r],
                            in.logit_sum[r], in.entropy[r],
                            MaskAt(in.mask_reward, r), MaskAt(in.mask_kl, r),
                            &sums[j]);
    }
  }
  static_assert(sizeof(sums) == 2 * kResponseSumValues * sizeof(double));
  BlockSumAll<2 * kResponseSumValues>(reinterpret_cast<double*>(sums));
  if (threadIdx.x == 0) {
    double* metrics =
        pair_metrics + static_cast<size_t>(pair) * kSparsePoMetricCount;
    for (int k = 0; k < kSparsePoMetricCount; ++k) metrics[k] = 0;
    g_shared = sparsepo_math::Pair(params, sums[0], sums[1], metrics);
  }
  __syncthreads();
  const double g = g_shared;
  float unused;
  for (int j = 0; j < 2; ++j) {
    const SeqSpan span = spans[2 * pair + j];
    for (int r = span.start + threadIdx.x; r < span.start + span.len;
         r += kThreads) {
      sparsepo_math::Row(
          params, g, j == 0 ? 1.0 : -1.0, in.logp[r], in.ref_logp[r], in.kl[r],
          MaskAt(in.mask_reward, r), MaskAt(in.mask_kl, r), &out.coef_a[r],
          &out.coef_b[r],
          out.dmask_reward != nullptr ? &out.dmask_reward[r] : &unused,
          out.dmask_kl != nullptr ? &out.dmask_kl[r] : &unused);
    }
  }
}

// metrics[k] += Σ_i pair_metrics[k of pair i], pairs in order.
__global__ void __launch_bounds__(kThreads)
    SparsePoMetricsKernel(double* metrics, const double* pair_metrics,
                          int num_pairs) {
  const int k = threadIdx.x;
  if (k >= kSparsePoMetricCount) return;
  double sum = 0;
  for (int i = 0; i < num_pairs; ++i) {
    sum += pair_metrics[static_cast<size_t>(i) * kSparsePoMetricCount + k];
  }
  metrics[k] += sum;
}

}  // namespace

size_t SparsePoMaskScratchDoubles(const SparsePoMaskNetShape& shape, int rows) {
  return MaskScratch::Doubles(shape.layers, shape.hidden, rows);
}

cudaError_t SparsePoMaskForward(cudaStream_t stream, float* mask,
                                const float* hidden, int rows,
                                const float* params,
                                const SparsePoMaskNetShape& shape,
                                double* scratch) {
  if (rows == 0) return cudaSuccess;
  const MaskScratch s(scratch, shape.layers, shape.hidden, rows);
  if (cudaError_t e = PreActivations(stream, s, hidden, rows, params, shape);
      e != cudaSuccess) {
    return e;
  }
  PREFOPT_LAUNCH(MaskKernel, ElementwiseBlocks(rows), kThreads, 0, stream)
  (mask, s, params, rows, shape);
  return cudaGetLastError();
}

cudaError_t SparsePoMaskBackward(cudaStream_t stream, float* grads,
                                 const float* dmask, const float* hidden,
                                 int rows, const float* params,
                                 const SparsePoMaskNetShape& shape,
                                 double* scratch) {
  if (rows == 0) return cudaSuccess;
  const MaskScratch s(scratch, shape.layers, shape.hidden, rows);
  if (cudaError_t e = PreActivations(stream, s, hidden, rows, params, shape);
      e != cudaSuccess) {
    return e;
  }
  PREFOPT_LAUNCH(RowGradKernel, ElementwiseBlocks(rows), kThreads, 0, stream)
  (s, dmask, params, rows, shape);
  PREFOPT_LAUNCH(LayerScalarsKernel, shape.layers, kThreads, 0, stream)
  (s, params, rows, shape);
  const int channel_blocks = CeilDiv(shape.hidden, kThreads);
  PREFOPT_LAUNCH(LayerInputSumsKernel, dim3(channel_blocks, shape.layers),
                 kThreads, 0, stream)
  (s, hidden, params, rows, shape);
  PREFOPT_LAUNCH(ParamGradKernel, channel_blocks, kThreads, 0, stream)
  (grads, s, params, shape);
  return cudaGetLastError();
}

cudaError_t MapoMask(cudaStream_t stream, float* mask, const float* scores,
                     int rows, const int32_t* map_groups, int num_maps,
                     const int32_t* groups, int num_groups,
                     const SeqSpan* spans, int num_spans, double* work) {
  if (num_spans == 0) return cudaSuccess;
  PREFOPT_LAUNCH(MapoMaskKernel, num_spans, kThreads, 0, stream)
  (mask, scores, rows, map_groups, num_maps, groups, num_groups, spans, work);
  return cudaGetLastError();
}

cudaError_t SparsePoCoefficients(cudaStream_t stream,
                                 const SparsePoRowOutputs& out, double* metrics,
                                 const SparsePoRowInputs& in,
                                 const SeqSpan* spans, int num_pairs,
                                 const SparsePoParams& params,
                                 double* pair_metrics) {
  if (num_pairs == 0) return cudaSuccess;
  PREFOPT_LAUNCH(SparsePoPairKernel, num_pairs, kThreads, 0, stream)
  (out, pair_metrics, in, spans, params);
  PREFOPT_LAUNCH(SparsePoMetricsKernel, 1, kThreads, 0, stream)
  (metrics, pair_metrics, num_pairs);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
