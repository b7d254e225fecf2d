#include "trainer/objectives/device_objective.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/types/span.h"
#include "kernels/objective_math.h"

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
    "prior/loss",
    "prior/weight_max",
    "prior/weight_entropy",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
    "kl",
};

}  // namespace

std::unique_ptr<DeviceObjective> DeviceObjective::Create(
    const Objective& objective, kernels::Backend* backend, int max_seqs,
    int vocab) {
  kernels::ObjectiveParams params;
  if (backend->HostAddressable() || !objective.DeviceParams(&params)) {
    return nullptr;
  }
  // Only KTO's pre-pass has a device form (kKtoKl).
  if (objective.has_prepass() && params.kind != kernels::ObjectiveKind::kKto) {
    return nullptr;
  }
  // Only ORPO's units take the prompt rows (kOrpo's third sequence).
  if (objective.scores_prompts() !=
      (params.kind == kernels::ObjectiveKind::kOrpo)) {
    return nullptr;
  }
  // ORPO adds a prompt per pair.
  const int seqs = params.kind == kernels::ObjectiveKind::kOrpo
                       ? max_seqs / 2 * 3
                       : max_seqs;
  return std::unique_ptr<DeviceObjective>(
      new DeviceObjective(&objective, backend, params, seqs, vocab));
}

DeviceObjective::DeviceObjective(const Objective* objective,
                                 kernels::Backend* backend,
                                 const kernels::ObjectiveParams& params,
                                 int max_seqs, int vocab)
    : objective_(objective),
      backend_(backend),
      params_(params),
      vocab_(vocab),
      metrics_(backend->Alloc(2 * kernels::kObjectiveMetricCount)),
      metrics_host_(kernels::kObjectiveMetricCount),
      counts_(kernels::kObjectiveMetricCount),
      reported_(kernels::kObjectiveMetricCount) {
  static_assert(sizeof(double) == 2 * sizeof(float));
  backend_->Zero(metrics_, 2 * kernels::kObjectiveMetricCount);
  spans_.reserve(max_seqs);
  in_order_.reserve(max_seqs);
  reference_.reserve(2 * static_cast<size_t>(max_seqs));
}

namespace {

// ℓ̃_t of response `response` of dataset example `example`, checked against
// the segment's length.
absl::Span<const float> TokenLogps(const ReferenceValues& reference,
                                   int example, int response, int count) {
  const absl::Span<const float> tokens =
      reference.TokenLogps(example, response);
  if (static_cast<int>(tokens.size()) != count) {
    std::fprintf(stderr,
                 "DeviceObjective::Coefficients: %zu reference token "
                 "log-probs for a response of %d tokens\n",
                 tokens.size(), count);
    std::abort();
  }
  return tokens;
}

}  // namespace

DeviceObjective::~DeviceObjective() { backend_->Free(metrics_); }

void DeviceObjective::AddPairCounts(double pairs, double chosen_tokens,
                                    double rejected_tokens) {
  using M = kernels::ObjectiveMetric;
  for (M m :
       {M::kMetricLoss, M::kMetricRewardsChosen, M::kMetricRewardsRejected,
        M::kMetricRewardsMargins, M::kMetricRewardsAccuracies,
        M::kMetricLogpsChosen, M::kMetricLogpsRejected,
        M::kMetricRankingAccuracy, M::kMetricRankingAccuracyLenNorm}) {
    counts_[m] += pairs;
  }
  counts_[M::kMetricLogitsChosen] += chosen_tokens * vocab_;
  counts_[M::kMetricLogitsRejected] += rejected_tokens * vocab_;
}

int DeviceObjective::SetSpans(const std::vector<ResponseSegment>& segments,
                              size_t per_example, size_t examples) {
  if (segments.size() != per_example * examples) {
    std::fprintf(stderr, "DeviceObjective: %zu segments for %zu examples\n",
                 segments.size(), examples);
    std::abort();
  }
  spans_.clear();
  reference_.clear();
  reference_tokens_.clear();
  int row = 0;
  for (const ResponseSegment& s : segments) {
    spans_.push_back({row, s.count});
    row += s.count;
  }
  return row;
}

void DeviceObjective::Launch(const kernels::ObjectiveParams& params,
                             ChunkedOutputLayer* output) {
  const ChunkedOutputLayer::BackendRows rows = output->rows();
  backend_->ObjectiveCoefficients(
      rows.coef, reinterpret_cast<double*>(metrics_), rows.logp, rows.logit_sum,
      rows.correct, rows.entropy,
      params.use_weighting ? rows.log_sum_sq : nullptr, spans_.data(),
      reference_.empty() ? nullptr : reference_.data(),
      reference_tokens_.empty() ? nullptr : reference_tokens_.data(),
      static_cast<int>(spans_.size()), params);
  pending_ = true;
}

void DeviceObjective::Prepass(const std::vector<ResponseSegment>& segments,
                              const std::vector<int>& examples,
                              const ReferenceValues& reference,
                              ChunkedOutputLayer* output) {
  SetSpans(segments, 1, examples.size());
  // The pre-pass scores each example's KL completion, response 1.
  for (int ex : examples) reference_.push_back(reference.SequenceLogp(ex, 1));
  kernels::ObjectiveParams params = params_;
  params.kind = kernels::ObjectiveKind::kKtoKl;
  counts_[kernels::kMetricKl] += static_cast<double>(examples.size());
  Launch(params, output);
}

void DeviceObjective::Coefficients(const std::vector<ResponseSegment>& segments,
                                   const std::vector<int>& examples,
                                   const std::vector<data::Example>& dataset,
                                   const ReferenceValues* reference,
                                   const MetricSums* prepass,
                                   double denominator, double token_denominator,
                                   ChunkedOutputLayer* output) {
  const kernels::ObjectiveKind kind = params_.kind;
  const size_t per_example = kernels::SequencesPerUnit(params_);
  const int row = SetSpans(segments, per_example, examples.size());
  // The rows of the responses (TRL's entropy covers no prompt rows).
  int response_rows = row;
  if (kind == kernels::ObjectiveKind::kOrpo) {
    // The segments come as every pair's chosen and rejected responses, then
    // every pair's prompt (WithPromptSegments); kOrpo's units are
    // [chosen, rejected, prompt].
    const size_t n = examples.size();
    in_order_.assign(spans_.begin(), spans_.end());
    for (size_t i = 0; i < n; ++i) {
      spans_[3 * i] = in_order_[2 * i];
      spans_[3 * i + 1] = in_order_[2 * i + 1];
      spans_[3 * i + 2] = in_order_[2 * n + i];
      response_rows -= in_order_[2 * n + i].len;
    }
  }
  kernels::ObjectiveParams params = params_;
  params.denominator = denominator;
  params.token_denominator = token_denominator;
  objective_->SetDevicePrepassParams(prepass, &params);
  using M = kernels::ObjectiveMetric;
  if (kind == kernels::ObjectiveKind::kKto) {
    // Each example's L̃ and label; its metrics go to its side's names, both
    // of which every micro-batch reports (count 0 for an absent side) so
    // that every rank has the same names (KtoObjective::Coefficients).
    double examples_of[2] = {0, 0}, tokens_of[2] = {0, 0};
    for (size_t i = 0; i < examples.size(); ++i) {
      const bool desirable = dataset[examples[i]].label;
      reference_.push_back(reference->SequenceLogp(examples[i], 0));
      reference_.push_back(desirable ? 1.0 : 0.0);
      examples_of[desirable ? 0 : 1] += 1;
      tokens_of[desirable ? 0 : 1] += spans_[i].len;
    }
    const double n = static_cast<double>(examples.size());
    counts_[M::kMetricLoss] += n;
    counts_[M::kMetricKl] += n;
    counts_[M::kMetricRewardsChosen] += examples_of[0];
    counts_[M::kMetricLogpsChosen] += examples_of[0];
    counts_[M::kMetricLogitsChosen] += tokens_of[0] * vocab_;
    counts_[M::kMetricRewardsRejected] += examples_of[1];
    counts_[M::kMetricLogpsRejected] += examples_of[1];
    counts_[M::kMetricLogitsRejected] += tokens_of[1] * vocab_;
    for (M m : {M::kMetricRewardsChosen, M::kMetricLogpsChosen,
                M::kMetricLogitsChosen, M::kMetricRewardsRejected,
                M::kMetricLogpsRejected, M::kMetricLogitsRejected}) {
      reported_[m] = true;
    }
  } else if (kind == kernels::ObjectiveKind::kCpo ||
             kind == kernels::ObjectiveKind::kOrpo) {
    // The pair metrics (reference_free.h's AddPairMetrics) and the NLL
    // term's: over the chosen tokens, the chosen prompt's too for ORPO, or
    // one per pair for CPO without it (TRL logs nll_loss 0).
    const size_t per = per_example;
    double chosen_tokens = 0, rejected_tokens = 0, nll_tokens = 0;
    for (size_t i = 0; i < examples.size(); ++i) {
      chosen_tokens += spans_[per * i].len;
      rejected_tokens += spans_[per * i + 1].len;
      nll_tokens +=
          spans_[per * i].len + (per == 3 ? spans_[3 * i + 2].len : 0);
    }
    const double n = static_cast<double>(examples.size());
    AddPairCounts(n, chosen_tokens, rejected_tokens);
    const bool with_nll =
        kind == kernels::ObjectiveKind::kOrpo || params.nll_weight != 0;
    counts_[M::kMetricNllLoss] += with_nll ? nll_tokens : n;
    if (kind == kernels::ObjectiveKind::kOrpo) {
      counts_[M::kMetricLogOddsRatio] += n;
      counts_[M::kMetricLogOddsChosen] += n;
    }
  } else if (kind == kernels::ObjectiveKind::kPreference) {
    double chosen_tokens = 0, rejected_tokens = 0;
    for (size_t i = 0; i < examples.size(); ++i) {
      const int chosen = spans_[2 * i].len, rejected = spans_[2 * i + 1].len;
      if (params.ld_alpha >= 0) {
        // LD-DPO weights the reference's tokens as the policy's
        // (docs/objectives.md §1): L̃_ld of both responses.
        const int shared = std::min(chosen, rejected);
        for (int j = 0; j < 2; ++j) {
          const absl::Span<const float> tokens = TokenLogps(
              *reference, examples[i], j, j == 0 ? chosen : rejected);
          double sum = 0;
          for (size_t t = 0; t < tokens.size(); ++t) {
            sum += kernels::objective_math::LdTokenWeight(
                       params.ld_alpha, static_cast<int>(t), shared) *
                   tokens[t];
          }
          reference_.push_back(sum);
        }
      } else {
        reference_.push_back(reference->SequenceLogp(examples[i], 0));
        reference_.push_back(reference->SequenceLogp(examples[i], 1));
      }
      chosen_tokens += chosen;
      rejected_tokens += rejected;
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
    AddPairCounts(n, chosen_tokens, rejected_tokens);
    counts_[M::kMetricMeanTokenAccuracy] += chosen_tokens;
  } else {
    if (kernels::NeedsReferenceTokens(params)) {
      // Once per micro-batch, in the rows' order, with the spans.
      for (size_t i = 0; i < examples.size(); ++i) {
        const absl::Span<const float> tokens =
            TokenLogps(*reference, examples[i], 0, spans_[i].len);
        reference_tokens_.insert(reference_tokens_.end(), tokens.begin(),
                                 tokens.end());
      }
    }
    const double n = static_cast<double>(examples.size());
    switch (params.kind) {
      case kernels::ObjectiveKind::kImplicitSequence:
      case kernels::ObjectiveKind::kImplicitToken:
        if (params.kind == kernels::ObjectiveKind::kImplicitSequence) {
          for (int ex : examples) {
            reference_.push_back(reference->SequenceLogp(ex, 0));
          }
        }
        for (M m : {M::kMetricLoss, M::kMetricIsftReward, M::kMetricIsftClamped,
                    M::kMetricLogpsPolicy, M::kMetricLogpsReference}) {
          counts_[m] += n;
        }
        // The token form's weight is a mean over tokens.
        counts_[M::kMetricIsftWeight] +=
            params.kind == kernels::ObjectiveKind::kImplicitToken ? row : n;
        counts_[M::kMetricSftLoss] += row;
        counts_[M::kMetricMeanTokenAccuracy] += row;
        break;
      case kernels::ObjectiveKind::kPrior: {
        // A sequence without tokens adds nothing (PriorObjective::Sequence).
        double sequences = 0;
        for (const kernels::SeqSpan& span : spans_) sequences += span.len > 0;
        for (M m : {M::kMetricLoss, M::kMetricPriorLoss, M::kMetricSftLoss,
                    M::kMetricMeanTokenAccuracy}) {
          counts_[m] += row;
        }
        counts_[M::kMetricPriorWeightMax] += sequences;
        counts_[M::kMetricPriorWeightEntropy] += sequences;
        break;
      }
      default:
        counts_[M::kMetricLoss] += row;
        counts_[M::kMetricMeanTokenAccuracy] += row;
        break;
    }
  }
  counts_[M::kMetricEntropy] += response_rows;
  Launch(params, output);
}

void DeviceObjective::TakeMetrics(MetricSums* sums) {
  if (!pending_) return;
  backend_->CopyToHost(reinterpret_cast<float*>(metrics_host_.data()), metrics_,
                       2 * kernels::kObjectiveMetricCount);
  backend_->Zero(metrics_, 2 * kernels::kObjectiveMetricCount);
  for (int k = 0; k < kernels::kObjectiveMetricCount; ++k) {
    if (counts_[k] > 0 || reported_[k]) {
      sums->Add(kMetricNames[k], metrics_host_[k], counts_[k]);
    }
  }
  std::fill(counts_.begin(), counts_.end(), 0.0);
  std::fill(reported_.begin(), reported_.end(), false);
  pending_ = false;
}

}  // namespace prefopt::objectives
