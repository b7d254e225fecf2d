// Chunked output layer kernels: per-row log-softmax statistics and the
// logit gradient, one block per row.
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

}  // namespace prefopt::kernels::cuda
