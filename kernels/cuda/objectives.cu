// The objectives' coefficients on the device (Backend::ObjectiveCoefficients,
// docs/objectives.md §7): per-sequence sums of pass 1's per-row values and of
// the objective's per-row terms, the per-pair (or per-sequence) math of
// kernels/objective_math.h in double, and each row's coefficient. Three small
// launches; the sums are reduced in a fixed order, so results are bitwise
// reproducible.
#include <cstddef>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/objective_math.h"

namespace prefopt::kernels::cuda {
namespace {

using objective_math::kRowScaleValues;
using objective_math::kSequenceSumValues;
using objective_math::PairTerms;
using objective_math::RowScale;
using objective_math::SequenceSums;

// Block-wide sum of kThreads threads' `v[0..count)`, in a fixed order; the
// result is valid in thread 0. `max_last`: the last value is a maximum. Only
// the values of `live` (bit k: v[k]) are reduced; the others come out 0.
template <int count>
__device__ void BlockSums(double v[count], double out[count],
                          bool max_last = false, uint32_t live = ~0u) {
  __shared__ double warp_sums[count][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < count; ++k) {
    if (!(live >> k & 1)) continue;
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
      for (int w = 0; w < kThreads / 32 && (live >> k & 1); ++w) {
        s = max_last && k == count - 1 ? fmax(s, warp_sums[k][w])
                                       : s + warp_sums[k][w];
      }
      out[k] = s;
    }
  }
}

// The SequenceSums values `p` reads, as BlockSums' `live` bits: pass 1's four
// and the objective's own (the others stay 0, and reducing them would double
// the kernel's shuffles).
__device__ uint32_t LiveSums(const ObjectiveParams& p) {
  auto bit = [](size_t offset) { return 1u << (offset / sizeof(double)); };
  uint32_t live = bit(offsetof(SequenceSums, logp)) |
                  bit(offsetof(SequenceSums, logit_sum)) |
                  bit(offsetof(SequenceSums, correct)) |
                  bit(offsetof(SequenceSums, entropy));
  switch (p.kind) {
    case ObjectiveKind::kPreference:
      if (p.ld_alpha >= 0) live |= bit(offsetof(SequenceSums, ld_logp));
      if (p.use_weighting) live |= bit(offsetof(SequenceSums, wpo));
      break;
    case ObjectiveKind::kImplicitToken:
      live |= bit(offsetof(SequenceSums, ref_logp)) |
              bit(offsetof(SequenceSums, phi)) |
              bit(offsetof(SequenceSums, weight)) |
              bit(offsetof(SequenceSums, clamped));
      break;
    case ObjectiveKind::kPrior:
      live |= bit(offsetof(SequenceSums, weight)) |
              bit(offsetof(SequenceSums, weighted_logp)) |
              bit(offsetof(SequenceSums, weight_log)) |
              bit(offsetof(SequenceSums, max_weight));
      break;
    default:
      break;
  }
  return live;
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
  static_assert(offsetof(SequenceSums, max_weight) ==
                (kSequenceSumValues - 1) * sizeof(double));
  double out[kSequenceSumValues];
  BlockSums<kSequenceSumValues>(reinterpret_cast<double*>(&local), out,
                                /*max_last=*/true, LiveSums(params));
  if (threadIdx.x == 0) {
    for (int k = 0; k < kSequenceSumValues; ++k) {
      sums[kSequenceSumValues * s + k] = out[k];
    }
  }
}

// Sequence s's SequenceSums from SequenceSumsKernel's output.
__device__ void LoadSums(const double* sums, int s, SequenceSums* out) {
  const double* from = sums + kSequenceSumValues * s;
  double* to = reinterpret_cast<double*>(out);
  for (int k = 0; k < kSequenceSumValues; ++k) to[k] = from[k];
}

// AOT's sorted losses (objective_math::AddSortedLoss) of the micro-batch's n
// pairs into sorted[0..n), through x, y (n doubles each) and px, py (n ints
// each): each sorted term in turn, its values, their ranks, then its losses,
// each step over the block's threads.
__device__ void SortedLosses(const ObjectiveParams& params, const double* sums,
                             const double* reference, int n, double* x,
                             double* y, int* px, int* py, PairTerms* sorted) {
  for (int i = threadIdx.x; i < n; i += kThreads) sorted[i] = PairTerms();
  for (int k = 0; k < params.num_terms; ++k) {
    const PairLoss type = params.loss[k];
    if (!objective_math::IsSorted(type)) continue;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      SequenceSums seq[2];
      LoadSums(sums, 2 * i, &seq[0]);
      LoadSums(sums, 2 * i + 1, &seq[1]);
      objective_math::SortedLossInputs(params, type, seq, reference + 2 * i,
                                       &x[i], &y[i]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      px[objective_math::StableRank(x, n, i)] = i;
      py[objective_math::StableRank(y, n, i)] = i;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += kThreads) {
      objective_math::AddSortedLoss(params, type, params.weight[k], x, y, px,
                                    py, j, sorted);
    }
  }
  __syncthreads();
}

// One block: each thread takes units (per_unit sequences) in turn, writes
// their sequences' RowScale to row_scales and keeps its metric sums; the
// block's sums are then added to `metrics`.
__global__ void __launch_bounds__(kThreads)
    ObjectiveUnitsKernel(double* metrics, RowScale* row_scales,
                         const double* sums, const SeqSpan* spans,
                         const double* reference, int num_seqs, int per_unit,
                         int reference_stride, ObjectiveParams params,
                         double* sort_scratch) {
  PairTerms* sorted = nullptr;
  if (params.kind == ObjectiveKind::kPreference &&
      objective_math::HasSortedTerms(params)) {
    const int n = num_seqs / 2;
    double* x = sort_scratch;
    double* y = x + n;
    int* px = reinterpret_cast<int*>(y + n);
    int* py = px + n;
    sorted = reinterpret_cast<PairTerms*>(y + 2 * n);
    SortedLosses(params, sums, reference, n, x, y, px, py, sorted);
  }
  double local[kObjectiveMetricCount];
  for (int k = 0; k < kObjectiveMetricCount; ++k) local[k] = 0;
  for (int u = threadIdx.x * per_unit; u + per_unit <= num_seqs;
       u += kThreads * per_unit) {
    SequenceSums seq[kMaxSequencesPerUnit];
    int tokens[kMaxSequencesPerUnit] = {};
    for (int j = 0; j < per_unit; ++j) {
      LoadSums(sums, u + j, &seq[j]);
      tokens[j] = spans[u + j].len;
    }
    double values[kObjectiveMetricCount];
    RowScale scales[kMaxSequencesPerUnit];
    objective_math::UnitCoefficients(
        params, seq,
        reference != nullptr ? reference + u * reference_stride : nullptr,
        tokens, sorted != nullptr ? sorted + u / 2 : nullptr, values, scales);
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

// Per sequence: its sums and row scale; per pair, for the sorted losses: x,
// y, px and py (two ints in a double) and a PairTerms (3 doubles).
constexpr int kSortDoublesPerPair = 6;
static_assert(sizeof(PairTerms) == 3 * sizeof(double));

size_t ObjectiveScratchDoubles(int num_seqs) {
  return static_cast<size_t>(kSequenceSumValues + kRowScaleValues) * num_seqs +
         static_cast<size_t>(kSortDoublesPerPair) * (num_seqs / 2);
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
  double* sort_scratch =
      scratch +
      static_cast<size_t>(kSequenceSumValues + kRowScaleValues) * num_seqs;
  PREFOPT_LAUNCH(SequenceSumsKernel, num_seqs, kThreads, 0, stream)
  (seq_sums, logp, logit_sum, correct, entropy, log_sum_sq, reference_tokens,
   spans, num_seqs, params);
  PREFOPT_LAUNCH(ObjectiveUnitsKernel, 1, kThreads, 0, stream)
  (metrics, row_scales, seq_sums, spans, reference, num_seqs,
   SequencesPerUnit(params), ReferenceValuesPerSequence(params), params,
   sort_scratch);
  PREFOPT_LAUNCH(ObjectiveRowsKernel, num_seqs, kThreads, 0, stream)
  (coef, row_scales, logp, reference_tokens, spans, params);
  return cudaGetLastError();
}

}  // namespace prefopt::kernels::cuda
