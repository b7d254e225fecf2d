// The objectives' coefficients on the device (Backend::ObjectiveCoefficients,
// docs/objectives.md §7): per-sequence sums of pass 1's per-row values, the
// per-pair (or per-sequence) math of kernels/objective_math.h in double, and
// the coefficients broadcast to the rows. Three small launches; the metric
// sums are reduced in a fixed order by one block, so results are bitwise
// reproducible.
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/objective_math.h"

namespace prefopt::kernels::cuda {
namespace {

constexpr int kSumValues = 4;  // logp, logit_sum, correct, entropy

// Block-wide sum of kThreads threads' `v[0..count)`, in a fixed order; the
// result is valid in thread 0.
template <int count>
__device__ void BlockSums(double v[count], double out[count]) {
  __shared__ double warp_sums[count][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < count; ++k) {
    const double s = WarpSum(v[k]);
    if (lane == 0) warp_sums[k][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 0; k < count; ++k) {
      double s = 0;
      for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[k][w];
      out[k] = s;
    }
  }
}

// One block per sequence: sums[4 s + k] = Σ over its rows of value k.
__global__ void __launch_bounds__(kThreads)
    SequenceSumsKernel(double* sums, const float* logp, const float* logit_sum,
                       const int32_t* correct, const float* entropy,
                       const SeqSpan* spans) {
  const SeqSpan span = spans[blockIdx.x];
  double v[kSumValues] = {0, 0, 0, 0};
  for (int r = span.start + threadIdx.x; r < span.start + span.len;
       r += kThreads) {
    v[0] += logp[r];
    v[1] += logit_sum[r];
    v[2] += correct[r];
    v[3] += entropy[r];
  }
  double out[kSumValues];
  BlockSums<kSumValues>(v, out);
  if (threadIdx.x == 0) {
    for (int k = 0; k < kSumValues; ++k) {
      sums[kSumValues * blockIdx.x + k] = out[k];
    }
  }
}

// One block: each thread takes units (pairs or sequences) in turn, writes
// their sequences' coefficients to seq_coef and keeps its metric sums; the
// block's sums are then added to `metrics`.
__global__ void __launch_bounds__(kThreads)
    ObjectiveUnitsKernel(double* metrics, float* seq_coef, const double* sums,
                         const SeqSpan* spans, const double* reference,
                         int num_seqs, ObjectiveParams params) {
  const int per_unit = params.kind == ObjectiveKind::kPreference ? 2 : 1;
  double local[kObjectiveMetricCount];
  for (int k = 0; k < kObjectiveMetricCount; ++k) local[k] = 0;
  for (int u = threadIdx.x * per_unit; u + per_unit <= num_seqs;
       u += kThreads * per_unit) {
    objective_math::SequenceSums seq[2];
    int tokens[2] = {0, 0};
    for (int j = 0; j < per_unit; ++j) {
      const double* s = sums + kSumValues * (u + j);
      seq[j].logp = s[0];
      seq[j].logit_sum = s[1];
      seq[j].correct = s[2];
      seq[j].entropy = s[3];
      tokens[j] = spans[u + j].len;
    }
    double values[kObjectiveMetricCount];
    float coef[2];
    objective_math::UnitCoefficients(
        params, seq, reference != nullptr ? reference + u : nullptr, tokens,
        values, coef);
    for (int k = 0; k < kObjectiveMetricCount; ++k) local[k] += values[k];
    for (int j = 0; j < per_unit; ++j) seq_coef[u + j] = coef[j];
  }
  double total[kObjectiveMetricCount];
  BlockSums<kObjectiveMetricCount>(local, total);
  if (threadIdx.x == 0) {
    for (int k = 0; k < kObjectiveMetricCount; ++k) metrics[k] += total[k];
  }
}

// One block per sequence: its rows' coefficient.
__global__ void __launch_bounds__(kThreads)
    ObjectiveRowsKernel(float* coef, const float* seq_coef,
                        const SeqSpan* spans) {
  const SeqSpan span = spans[blockIdx.x];
  const float g = seq_coef[blockIdx.x];
  for (int r = threadIdx.x; r < span.len; r += kThreads) {
    coef[span.start + r] = g;
  }
}

}  // namespace

cudaError_t ObjectiveCoefficients(cudaStream_t stream, float* coef,
                                  double* metrics, const float* logp,
                                  const float* logit_sum,
                                  const int32_t* correct, const float* entropy,
                                  const SeqSpan* spans, const double* reference,
                                  int num_seqs, const ObjectiveParams& params,
                                  double* seq_sums, float* seq_coef) {
  if (num_seqs == 0) return cudaSuccess;
  PREFOPT_LAUNCH(SequenceSumsKernel, num_seqs, kThreads, 0, stream)
  (seq_sums, logp, logit_sum, correct, entropy, spans);
  PREFOPT_LAUNCH(ObjectiveUnitsKernel, 1, kThreads, 0, stream)
  (metrics, seq_coef, seq_sums, spans, reference, num_seqs, params);
  PREFOPT_LAUNCH(ObjectiveRowsKernel, num_seqs, kThreads, 0, stream)
  (coef, seq_coef, spans);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
