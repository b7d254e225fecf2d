// The objectives' coefficients on the device (Backend::ObjectiveCoefficients,
// docs/objectives.md §7): per-sequence sums of pass 1's per-row values and of
// the objective's per-row terms, the per-pair (or per-sequence) math of
// kernels/objective_math.h in double, and each row's coefficient. Three small
// launches; the sums are reduced in a fixed order, so results are bitwise
// reproducible.
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/objective_math.h"

namespace prefopt::kernels::cuda {
namespace {

using objective_math::kRowScaleValues;
using objective_math::kSequenceSumValues;
using objective_math::RowScale;
using objective_math::SequenceSums;

// Block-wide sum of kThreads threads' `v[0..count)`, in a fixed order; the
// result is valid in thread 0. `max_last`: the last value is a maximum.
template <int count>
__device__ void BlockSums(double v[count], double out[count],
                          bool max_last = false) {
  __shared__ double warp_sums[count][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < count; ++k) {
    double s = v[k];
    if (max_last && k == count - 1) {
      for (int o = 16; o > 0; o >>= 1) {
        s = fmax(s, __shfl_xor_sync(kFullMask, s, o));
      }
    } else {
      s = WarpSum(s);
    }
    if (lane == 0) warp_sums[k][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 0; k < count; ++k) {
      double s = 0;
      for (int w = 0; w < kThreads / 32; ++w) {
        s = max_last && k == count - 1 ? fmax(s, warp_sums[k][w])
                                       : s + warp_sums[k][w];
      }
      out[k] = s;
    }
  }
}

// One block per sequence: its SequenceSums (objective_math::AddRow over its
// rows) into sums[kSequenceSumValues s ...]. A pair's responses read each
// other's length (LD-DPO's shared length).
__global__ void __launch_bounds__(kThreads)
    SequenceSumsKernel(double* sums, const float* logp, const float* logit_sum,
                       const int32_t* correct, const float* entropy,
                       const float* log_sum_sq, const float* reference_tokens,
                       const SeqSpan* spans, int num_seqs,
                       ObjectiveParams params) {
  const int s = blockIdx.x;
  const SeqSpan span = spans[s];
  int shared = span.len;
  if (params.kind == ObjectiveKind::kPreference && (s ^ 1) < num_seqs) {
    shared = min(shared, spans[s ^ 1].len);
  }
  SequenceSums local;
  for (int t = threadIdx.x; t < span.len; t += kThreads) {
    const int r = span.start + t;
    objective_math::AddRow(
        params, t, shared, logp[r], logit_sum[r], correct[r], entropy[r],
        reference_tokens != nullptr ? reference_tokens[r] : 0.0f,
        log_sum_sq != nullptr ? log_sum_sq[r] : 0.0f, &local);
  }
  // max_weight is SequenceSums' last member, the one maximum.
  double out[kSequenceSumValues];
  BlockSums<kSequenceSumValues>(reinterpret_cast<double*>(&local), out,
                                /*max_last=*/true);
  if (threadIdx.x == 0) {
    for (int k = 0; k < kSequenceSumValues; ++k) {
      sums[kSequenceSumValues * s + k] = out[k];
    }
  }
}

// One block: each thread takes units (pairs or sequences) in turn, writes
// their sequences' RowScale to row_scales and keeps its metric sums; the
// block's sums are then added to `metrics`.
__global__ void __launch_bounds__(kThreads)
    ObjectiveUnitsKernel(double* metrics, RowScale* row_scales,
                         const double* sums, const SeqSpan* spans,
                         const double* reference, int num_seqs,
                         ObjectiveParams params) {
  const int per_unit = params.kind == ObjectiveKind::kPreference ? 2 : 1;
  double local[kObjectiveMetricCount];
  for (int k = 0; k < kObjectiveMetricCount; ++k) local[k] = 0;
  for (int u = threadIdx.x * per_unit; u + per_unit <= num_seqs;
       u += kThreads * per_unit) {
    SequenceSums seq[2];
    int tokens[2] = {0, 0};
    for (int j = 0; j < per_unit; ++j) {
      const double* s = sums + kSequenceSumValues * (u + j);
      double* d = reinterpret_cast<double*>(&seq[j]);
      for (int k = 0; k < kSequenceSumValues; ++k) d[k] = s[k];
      tokens[j] = spans[u + j].len;
    }
    double values[kObjectiveMetricCount];
    RowScale scales[2];
    objective_math::UnitCoefficients(
        params, seq, reference != nullptr ? reference + u : nullptr, tokens,
        values, scales);
    for (int k = 0; k < kObjectiveMetricCount; ++k) local[k] += values[k];
    for (int j = 0; j < per_unit; ++j) row_scales[u + j] = scales[j];
  }
  double total[kObjectiveMetricCount];
  BlockSums<kObjectiveMetricCount>(local, total);
  if (threadIdx.x == 0) {
    for (int k = 0; k < kObjectiveMetricCount; ++k) metrics[k] += total[k];
  }
}

// One block per sequence: its rows' coefficients.
__global__ void __launch_bounds__(kThreads)
    ObjectiveRowsKernel(float* coef, const RowScale* row_scales,
                        const float* logp, const float* reference_tokens,
                        const SeqSpan* spans, ObjectiveParams params) {
  const SeqSpan span = spans[blockIdx.x];
  const RowScale scale = row_scales[blockIdx.x];
  for (int t = threadIdx.x; t < span.len; t += kThreads) {
    const int r = span.start + t;
    coef[r] = objective_math::RowCoefficient(
        params, scale, t, logp[r],
        reference_tokens != nullptr ? reference_tokens[r] : 0.0f);
  }
}

}  // namespace

size_t ObjectiveScratchDoubles(int num_seqs) {
  return static_cast<size_t>(kSequenceSumValues + kRowScaleValues) * num_seqs;
}

cudaError_t ObjectiveCoefficients(
    cudaStream_t stream, float* coef, double* metrics, const float* logp,
    const float* logit_sum, const int32_t* correct, const float* entropy,
    const float* log_sum_sq, const SeqSpan* spans, const double* reference,
    const float* reference_tokens, int num_seqs, const ObjectiveParams& params,
    double* scratch) {
  if (num_seqs == 0) return cudaSuccess;
  double* seq_sums = scratch;
  RowScale* row_scales = reinterpret_cast<RowScale*>(
      scratch + static_cast<size_t>(kSequenceSumValues) * num_seqs);
  PREFOPT_LAUNCH(SequenceSumsKernel, num_seqs, kThreads, 0, stream)
  (seq_sums, logp, logit_sum, correct, entropy, log_sum_sq, reference_tokens,
   spans, num_seqs, params);
  PREFOPT_LAUNCH(ObjectiveUnitsKernel, 1, kThreads, 0, stream)
  (metrics, row_scales, seq_sums, spans, reference, num_seqs, params);
  PREFOPT_LAUNCH(ObjectiveRowsKernel, num_seqs, kThreads, 0, stream)
  (coef, row_scales, logp, reference_tokens, spans, params);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
