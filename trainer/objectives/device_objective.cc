#include "trainer/objectives/device_objective.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace prefopt::objectives {
namespace {

// The metrics' names (kernels::ObjectiveMetric order) as the host objectives
// report them.
constexpr const char* kMetricNames[kernels::kObjectiveMetricCount] = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "mean_token_accuracy",
    "ranking/accuracy",
    "ranking/accuracy_len_norm",
    "entropy",
    "isft/weight",
    "isft/reward",
    "isft/clamped",
    "logps/policy",
    "logps/reference",
    "sft/loss",
};

}  // namespace

std::unique_ptr<DeviceObjective> DeviceObjective::Create(
    const Objective& objective, kernels::Backend* backend, int max_seqs,
    int vocab) {
  kernels::ObjectiveParams params;
  if (backend->HostAddressable() || !objective.DeviceParams(&params) ||
      objective.has_prepass() || objective.scores_prompts() ||
      objective.needs_row_log_sum_sq_probs() ||
      objective.reference_needs() == ReferenceNeeds::kTokenLogps) {
    return nullptr;
  }
  return std::unique_ptr<DeviceObjective>(
      new DeviceObjective(backend, params, max_seqs, vocab));
}

DeviceObjective::DeviceObjective(kernels::Backend* backend,
                                 const kernels::ObjectiveParams& params,
                                 int max_seqs, int vocab)
    : backend_(backend),
      params_(params),
      vocab_(vocab),
      metrics_(backend->Alloc(2 * kernels::kObjectiveMetricCount)),
      metrics_host_(kernels::kObjectiveMetricCount),
      counts_(kernels::kObjectiveMetricCount) {
  static_assert(sizeof(double) == 2 * sizeof(float));
  backend_->Zero(metrics_, 2 * kernels::kObjectiveMetricCount);
  spans_.reserve(max_seqs);
  reference_.reserve(max_seqs);
}

DeviceObjective::~DeviceObjective() { backend_->Free(metrics_); }

void DeviceObjective::Coefficients(const std::vector<ResponseSegment>& segments,
                                   const std::vector<int>& examples,
                                   const ReferenceValues* reference,
                                   double denominator, double token_denominator,
                                   ChunkedOutputLayer* output) {
  const bool pairs = params_.kind == kernels::ObjectiveKind::kPreference;
  const size_t per_example = pairs ? 2 : 1;
  if (segments.size() != per_example * examples.size()) {
    std::fprintf(stderr,
                 "DeviceObjective::Coefficients: %zu segments for %zu "
                 "examples\n",
                 segments.size(), examples.size());
    std::abort();
  }
  spans_.clear();
  reference_.clear();
  int row = 0;
  for (const ResponseSegment& s : segments) {
    spans_.push_back({row, s.count});
    row += s.count;
  }
  kernels::ObjectiveParams params = params_;
  params.denominator = denominator;
  using M = kernels::ObjectiveMetric;
  if (pairs) {
    double chosen_tokens = 0, rejected_tokens = 0;
    for (size_t i = 0; i < examples.size(); ++i) {
      reference_.push_back(reference->SequenceLogp(examples[i], 0));
      reference_.push_back(reference->SequenceLogp(examples[i], 1));
      chosen_tokens += spans_[2 * i].len;
      rejected_tokens += spans_[2 * i + 1].len;
    }
    // DPO's SFT term: pairs per chosen token of the global batch, or of this
    // micro-batch scored on its own (trainer/objectives/dpo.cc).
    if (params.sft_weight != 0) {
      params.pairs_per_token =
          token_denominator > 0 ? denominator / token_denominator : 0;
      if (!(params.pairs_per_token > 0)) {
        params.pairs_per_token =
            static_cast<double>(examples.size()) / std::max(chosen_tokens, 1.0);
      }
    }
    const double n = static_cast<double>(examples.size());
    for (M m :
         {M::kMetricLoss, M::kMetricRewardsChosen, M::kMetricRewardsRejected,
          M::kMetricRewardsMargins, M::kMetricRewardsAccuracies,
          M::kMetricLogpsChosen, M::kMetricLogpsRejected,
          M::kMetricRankingAccuracy, M::kMetricRankingAccuracyLenNorm}) {
      counts_[m] += n;
    }
    counts_[M::kMetricLogitsChosen] += chosen_tokens * vocab_;
    counts_[M::kMetricLogitsRejected] += rejected_tokens * vocab_;
    counts_[M::kMetricMeanTokenAccuracy] += chosen_tokens;
  } else if (params.kind == kernels::ObjectiveKind::kImplicitSequence) {
    for (int ex : examples) {
      reference_.push_back(reference->SequenceLogp(ex, 0));
    }
    const double n = static_cast<double>(examples.size());
    for (M m : {M::kMetricLoss, M::kMetricIsftWeight, M::kMetricIsftReward,
                M::kMetricIsftClamped, M::kMetricLogpsPolicy,
                M::kMetricLogpsReference}) {
      counts_[m] += n;
    }
    counts_[M::kMetricSftLoss] += row;
    counts_[M::kMetricMeanTokenAccuracy] += row;
  } else {
    counts_[M::kMetricLoss] += row;
    counts_[M::kMetricMeanTokenAccuracy] += row;
  }
  counts_[M::kMetricEntropy] += row;
  const ChunkedOutputLayer::BackendRows rows = output->rows();
  backend_->ObjectiveCoefficients(
      rows.coef, reinterpret_cast<double*>(metrics_), rows.logp, rows.logit_sum,
      rows.correct, rows.entropy, spans_.data(),
      reference_.empty() ? nullptr : reference_.data(),
      static_cast<int>(spans_.size()), params);
  pending_ = true;
}

void DeviceObjective::TakeMetrics(MetricSums* sums) {
  if (!pending_) return;
  backend_->CopyToHost(reinterpret_cast<float*>(metrics_host_.data()), metrics_,
                       2 * kernels::kObjectiveMetricCount);
  backend_->Zero(metrics_, 2 * kernels::kObjectiveMetricCount);
  for (int k = 0; k < kernels::kObjectiveMetricCount; ++k) {
    if (counts_[k] > 0)
      sums->Add(kMetricNames[k], metrics_host_[k], counts_[k]);
  }
  std::fill(counts_.begin(), counts_.end(), 0.0);
  pending_ = false;
}

}  // namespace prefopt::objectives
