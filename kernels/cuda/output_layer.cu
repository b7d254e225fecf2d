// Chunked output layer kernels: per-row log-softmax statistics and the
// logit gradient, one block per row; SparsePO's two-model forms of both.
#include <cuda_bf16.h>

#include <climits>
#include <cmath>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace prefopt::kernels::cuda {
namespace {

constexpr int kOutputThreads = 512;

// Online softmax statistics of a run of columns, relative to its running max
// m: with y_v = exp(z_v - m), sumexp = sum y, shifted = sum y (z - m) (the
// entropy's) and sumsq = sum y^2 (log sum p^2's).
struct RowStat {
  float max;
  int arg;
  float sumexp;
  float shifted;
  float sumsq;
  double sum;  // sum of z
};

// `s` re-expressed relative to a new max: y scales by a = exp(old - new) and
// z - m shifts by old - new. A side with no elements (max = -inf) has all sums
// 0 and must not turn into -inf - -inf = NaN.
__device__ __forceinline__ void Rescale(RowStat* s, float new_max) {
  if (s->max == new_max) return;
  if (s->sumexp == 0.0f) {
    s->max = new_max;
    return;
  }
  const float delta = s->max - new_max;
  const float a = exp2f(delta * kLog2e);
  s->shifted = a * (s->shifted + delta * s->sumexp);
  s->sumexp *= a;
  s->sumsq *= a * a;
  s->max = new_max;
}

__device__ __forceinline__ RowStat Combine(RowStat a, RowStat b) {
  const float m = fmaxf(a.max, b.max);
  const int arg =
      a.max > b.max ? a.arg : (b.max > a.max ? b.arg : min(a.arg, b.arg));
  Rescale(&a, m);
  Rescale(&b, m);
  RowStat r;
  r.max = m;
  r.arg = arg;
  r.sumexp = a.sumexp + b.sumexp;
  r.shifted = a.shifted + b.shifted;
  r.sumsq = a.sumsq + b.sumsq;
  r.sum = a.sum + b.sum;
  return r;
}

__device__ RowStat ShuffleXor(const RowStat& s, int o) {
  RowStat r;
  r.max = __shfl_xor_sync(kFullMask, s.max, o);
  r.arg = __shfl_xor_sync(kFullMask, s.arg, o);
  r.sumexp = __shfl_xor_sync(kFullMask, s.sumexp, o);
  r.shifted = __shfl_xor_sync(kFullMask, s.shifted, o);
  r.sumsq = __shfl_xor_sync(kFullMask, s.sumsq, o);
  r.sum = __shfl_xor_sync(kFullMask, s.sum, o);
  return r;
}

__global__ void __launch_bounds__(kOutputThreads)
    OutputRowStatsKernel(float* lse, float* logp, float* logit_sum,
                         int32_t* correct, float* entropy,
                         float* log_sum_sq_probs, const float* logits,
                         const int32_t* labels, int V) {
  __shared__ RowStat warp_stats[kOutputThreads / 32];
  const int r = blockIdx.x;
  const float* z = logits + static_cast<size_t>(r) * V;
  // Each thread scans its columns in increasing order: a strict > keeps the
  // first index of equal maxima, as torch.argmax does.
  RowStat s{-INFINITY, INT_MAX, 0.0f, 0.0f, 0.0f, 0.0};
  for (int v = threadIdx.x; v < V; v += kOutputThreads) {
    const float x = z[v];
    s.sum += x;
    if (x > s.max) {
      Rescale(&s, x);
      s.sumexp += 1.0f;
      s.sumsq += 1.0f;
      s.arg = v;
    } else {
      const float d = x - s.max;
      const float y = exp2f(d * kLog2e);
      s.sumexp += y;
      s.shifted += y * d;
      s.sumsq += y * y;
    }
  }
  for (int o = 16; o > 0; o >>= 1) s = Combine(s, ShuffleXor(s, o));
  if (threadIdx.x % 32 == 0) warp_stats[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    RowStat t = warp_stats[0];
    for (int w = 1; w < kOutputThreads / 32; ++w) t = Combine(t, warp_stats[w]);
    // H = log S0 - S1 / S0 and log sum p^2 = log S2 - 2 log S0, with S0 and
    // S2 >= 1 (the max's own term is 1).
    const float log_s0 = logf(t.sumexp);
    const float l = t.max + log_s0;
    const int32_t label = labels[r];
    lse[r] = l;
    logp[r] = z[label] - l;
    logit_sum[r] = static_cast<float>(t.sum);
    correct[r] = t.arg == label ? 1 : 0;
    entropy[r] = log_s0 - t.shifted / t.sumexp;
    if (log_sum_sq_probs != nullptr) {
      log_sum_sq_probs[r] = logf(t.sumsq) - 2.0f * log_s0;
    }
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

// Sum of one value per thread of a kOutputThreads block, in thread 0 (its
// value elsewhere is unspecified). `shared` holds a double per warp.
__device__ double BlockSum(double v, double* shared) {
  v = WarpSum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kOutputThreads / 32; ++w) total += shared[w];
  }
  return total;
}

// The maximum over the block, in every thread.
__device__ float BlockMax(float v, float* shared) {
  v = WarpMax(v);
  __syncthreads();
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float m = shared[0];
  for (int w = 1; w < kOutputThreads / 32; ++w) m = fmaxf(m, shared[w]);
  return m;
}

// Two passes over both rows: their maxima, then with e = exp(z − max z) and
// ẽ = exp(z̃ − max z̃) the sums Σe, Σe(z − max z) (the entropy's), Σẽ,
// Σẽ(z − z̃) (the KL term's), Σz and Σz̃; per thread in fp32 (at most
// ⌈V / 512⌉ terms each), across threads in double.
__global__ void __launch_bounds__(kOutputThreads)
    SparsePoRowStatsKernel(float* lse, float* ref_lse, float* logp,
                           float* ref_logp, float* kl, float* logit_sum,
                           float* ref_logit_sum, float* entropy,
                           const float* logits, const float* ref_logits,
                           const int32_t* labels, int V) {
  __shared__ float max_shared[kOutputThreads / 32];
  __shared__ double sum_shared[kOutputThreads / 32];
  const int r = blockIdx.x;
  const float* z = logits + static_cast<size_t>(r) * V;
  const float* zr = ref_logits + static_cast<size_t>(r) * V;
  float m = -INFINITY, mr = -INFINITY;
  for (int v = threadIdx.x; v < V; v += kOutputThreads) {
    m = fmaxf(m, z[v]);
    mr = fmaxf(mr, zr[v]);
  }
  m = BlockMax(m, max_shared);
  mr = BlockMax(mr, max_shared);
  float e = 0.0f, e_shifted = 0.0f, er = 0.0f, er_diff = 0.0f;
  double sum = 0.0, ref_sum = 0.0;
  for (int v = threadIdx.x; v < V; v += kOutputThreads) {
    const float x = z[v], xr = zr[v];
    const float d = x - m;
    const float y = exp2f(d * kLog2e);
    const float yr = exp2f((xr - mr) * kLog2e);
    e += y;
    e_shifted += y * d;
    er += yr;
    er_diff += yr * (x - xr);
    sum += x;
    ref_sum += xr;
  }
  const double s_e = BlockSum(e, sum_shared);
  const double s_shifted = BlockSum(e_shifted, sum_shared);
  const double s_er = BlockSum(er, sum_shared);
  const double s_diff = BlockSum(er_diff, sum_shared);
  const double s_sum = BlockSum(sum, sum_shared);
  const double s_ref_sum = BlockSum(ref_sum, sum_shared);
  if (threadIdx.x == 0) {
    const double l = m + log(s_e);
    const double lr = mr + log(s_er);
    const int32_t label = labels[r];
    lse[r] = static_cast<float>(l);
    ref_lse[r] = static_cast<float>(lr);
    logp[r] = static_cast<float>(z[label] - l);
    ref_logp[r] = static_cast<float>(zr[label] - lr);
    // E_p[z − z̃] − (lse z − lse z̃) = Σ_v p_v (log π_v − log p_v).
    kl[r] = static_cast<float>(s_diff / s_er - (l - lr));
    if (logit_sum != nullptr) logit_sum[r] = static_cast<float>(s_sum);
    if (ref_logit_sum != nullptr) {
      ref_logit_sum[r] = static_cast<float>(s_ref_sum);
    }
    if (entropy != nullptr) {
      entropy[r] = static_cast<float>(log(s_e) - s_shifted / s_e);
    }
  }
}

template <bool kBf16>
__global__ void __launch_bounds__(kOutputThreads)
    SparsePoRowGradKernel(float* logits, const float* ref_logits,
                          const int32_t* labels, const float* lse,
                          const float* ref_lse, const float* coef_a,
                          const float* coef_b, int V) {
  const int r = blockIdx.x;
  float* z = logits + static_cast<size_t>(r) * V;
  const float* zr = ref_logits + static_cast<size_t>(r) * V;
  const float a = coef_a[r], b = coef_b[r];
  const float l = lse[r], lr = ref_lse[r];
  const int label = labels[r];
  const bool zero = a == 0.0f && b == 0.0f;
  auto grad = [&](int v) {
    if (zero) return 0.0f;
    float g = (a + b) * exp2f((z[v] - l) * kLog2e);
    if (b != 0.0f) g -= b * exp2f((zr[v] - lr) * kLog2e);
    return v == label ? g - a : g;
  };
  if constexpr (kBf16) {
    // In place as OutputRowGradKernel: read before the barrier, write after.
    auto* out = reinterpret_cast<__nv_bfloat16*>(z);
    for (int base = 0; base < V; base += kOutputThreads) {
      const int v = base + threadIdx.x;
      const float g = v < V ? grad(v) : 0.0f;
      __syncthreads();
      if (v < V) out[v] = __float2bfloat16_rn(g);
    }
  } else {
    for (int v = threadIdx.x; v < V; v += kOutputThreads) z[v] = grad(v);
  }
}

}  // namespace

cudaError_t OutputRowStats(cudaStream_t stream, float* lse, float* logp,
                           float* logit_sum, int32_t* correct, float* entropy,
                           float* log_sum_sq_probs, const float* logits,
                           const int32_t* labels, int rows, int V) {
  PREFOPT_LAUNCH(OutputRowStatsKernel, rows, kOutputThreads, 0, stream)
  (lse, logp, logit_sum, correct, entropy, log_sum_sq_probs, logits, labels, V);
  return cudaGetLastError();
}

cudaError_t OutputRowGrad(cudaStream_t stream, bool bf16, float* logits,
                          const int32_t* labels, const float* lse,
                          const float* coef, int rows, int V) {
  if (bf16) {
    PREFOPT_LAUNCH(OutputRowGradKernel<true>, rows, kOutputThreads, 0, stream)
    (logits, labels, lse, coef, V);
  } else {
    PREFOPT_LAUNCH(OutputRowGradKernel<false>, rows, kOutputThreads, 0, stream)
    (logits, labels, lse, coef, V);
  }
  return cudaGetLastError();
}

cudaError_t SparsePoRowStats(cudaStream_t stream, float* lse, float* ref_lse,
                             float* logp, float* ref_logp, float* kl,
                             float* logit_sum, float* ref_logit_sum,
                             float* entropy, const float* logits,
                             const float* ref_logits, const int32_t* labels,
                             int rows, int V) {
  PREFOPT_LAUNCH(SparsePoRowStatsKernel, rows, kOutputThreads, 0, stream)
  (lse, ref_lse, logp, ref_logp, kl, logit_sum, ref_logit_sum, entropy, logits,
   ref_logits, labels, V);
  return cudaGetLastError();
}

cudaError_t SparsePoRowGrad(cudaStream_t stream, bool bf16, float* logits,
                            const float* ref_logits, const int32_t* labels,
                            const float* lse, const float* ref_lse,
                            const float* coef_a, const float* coef_b, int rows,
                            int V) {
  if (bf16) {
    PREFOPT_LAUNCH(SparsePoRowGradKernel<true>, rows, kOutputThreads, 0, stream)
    (logits, ref_logits, labels, lse, ref_lse, coef_a, coef_b, V);
  } else {
    PREFOPT_LAUNCH(SparsePoRowGradKernel<false>, rows, kOutputThreads, 0,
                   stream)
    (logits, ref_logits, labels, lse, ref_lse, coef_a, coef_b, V);
  }
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
