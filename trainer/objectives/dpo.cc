#include "trainer/objectives/dpo.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/objective_math.h"
#include "trainer/objectives/length_check.h"
#include "trainer/objectives/logistic.h"

namespace prefopt::objectives {
namespace {

// The losses on the score difference Δ = s_w − s_l (or its length average);
// the others read the raw log-ratios (docs/objectives.md §1).
// The shared per-pair loss (kernels/objective_math.h) of a loss type; none
// for SFT (a token mean). The host sorts AOT's itself (AddTerm).
std::optional<kernels::PairLoss> DevicePairLoss(DpoConfig::LossType type) {
  switch (type) {
    case DpoConfig::SIGMOID:
      return kernels::PairLoss::kSigmoid;
    case DpoConfig::SIGMOID_NORM:
      return kernels::PairLoss::kSigmoidNorm;
    case DpoConfig::HINGE:
      return kernels::PairLoss::kHinge;
    case DpoConfig::IPO:
      return kernels::PairLoss::kIpo;
    case DpoConfig::ROBUST:
      return kernels::PairLoss::kRobust;
    case DpoConfig::EXO_PAIR:
      return kernels::PairLoss::kExoPair;
    case DpoConfig::DISCOPOP:
      return kernels::PairLoss::kDiscopop;
    case DpoConfig::NCA_PAIR:
      return kernels::PairLoss::kNcaPair;
    case DpoConfig::BCO_PAIR:
      return kernels::PairLoss::kBcoPair;
    case DpoConfig::SPPO_HARD:
      return kernels::PairLoss::kSppoHard;
    case DpoConfig::APO_ZERO:
      return kernels::PairLoss::kApoZero;
    case DpoConfig::APO_DOWN:
      return kernels::PairLoss::kApoDown;
    case DpoConfig::AOT:
      return kernels::PairLoss::kAot;
    case DpoConfig::AOT_UNPAIRED:
      return kernels::PairLoss::kAotUnpaired;
    default:
      return std::nullopt;
  }
}

bool OnScoreDifference(DpoConfig::LossType type) {
  switch (type) {
    case DpoConfig::SIGMOID:
    case DpoConfig::HINGE:
    case DpoConfig::IPO:
    case DpoConfig::EXO_PAIR:
    case DpoConfig::ROBUST:
    case DpoConfig::DISCOPOP:
    case DpoConfig::SIGMOID_NORM:
      return true;
    default:
      return false;
  }
}

// The permutation that sorts `values` ascending (ties keep their order).
std::vector<int> SortOrder(const std::vector<double>& values) {
  std::vector<int> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return values[a] < values[b]; });
  return order;
}

}  // namespace

struct DpoObjective::PairState {
  int chosen_tokens = 0;
  int rejected_tokens = 0;
  double ratio_chosen = 0;  // r = L − L̃ (LD-weighted with ld_alpha)
  double ratio_rejected = 0;
  double score_chosen = 0;  // f-DPO's score of r, and ds/dr
  double score_rejected = 0;
  double dscore_chosen = 1;
  double dscore_rejected = 1;
  // L and L̃ of both responses (LD-weighted with ld_alpha), which AOT sorts.
  double logp_chosen = 0;
  double logp_rejected = 0;
  double ref_chosen = 0;
  double ref_rejected = 0;
  // Σ_k w_k·loss_k before WPO's weight, and its derivatives w.r.t. L.
  double loss = 0;
  double dchosen = 0;
  double drejected = 0;
};

absl::StatusOr<std::unique_ptr<DpoObjective>> DpoObjective::Create(
    const DpoConfig& config, int vocab_size) {
  if (!(config.beta() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.dpo.beta: must be > 0, got ", config.beta()));
  }
  const double eps = config.label_smoothing();
  if (eps < 0 || eps >= 0.5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.dpo.label_smoothing: must be in [0, 0.5), got ", eps));
  }
  if (config.loss_weights_size() > 0 &&
      config.loss_weights_size() != config.loss_type_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.dpo.loss_weights: has ", config.loss_weights_size(),
        " entries for ", config.loss_type_size(), " loss types"));
  }
  std::unique_ptr<DpoObjective> dpo(new DpoObjective());
  dpo->beta_ = config.beta();
  dpo->eps_ = eps;
  dpo->vocab_ = vocab_size;
  for (int k = 0; k < config.loss_type_size(); ++k) {
    const DpoConfig::LossType type = config.loss_type(k);
    if (type == DpoConfig::SFT && config.use_weighting()) {
      return absl::InvalidArgumentError(
          "objective.dpo.use_weighting: not with loss_type SFT");
    }
    if (type == DpoConfig::EXO_PAIR && !(eps > 0)) {
      return absl::InvalidArgumentError(
          "objective.dpo.label_smoothing: must be > 0 for loss_type EXO_PAIR "
          "(its loss has log(label_smoothing))");
    }
    dpo->terms_.push_back(
        {type, config.loss_weights_size() > 0 ? config.loss_weights(k) : 1.0});
  }
  if (dpo->terms_.empty()) dpo->terms_.push_back({DpoConfig::SIGMOID, 1.0});
  dpo->divergence_ = config.f_divergence_type();
  if (config.has_f_alpha_divergence_coef()) {
    dpo->alpha_divergence_ = config.f_alpha_divergence_coef();
  }
  dpo->use_weighting_ = config.use_weighting();
  if (config.has_ld_alpha()) {
    if (!(config.ld_alpha() >= 0 && config.ld_alpha() <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("objective.dpo.ld_alpha: must be in [0, 1], got ",
                       config.ld_alpha()));
    }
    dpo->ld_alpha_ = config.ld_alpha();
  }
  if (config.has_discopop_tau()) {
    if (!(config.discopop_tau() > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("objective.dpo.discopop_tau: must be > 0, got ",
                       config.discopop_tau()));
    }
    dpo->discopop_tau_ = config.discopop_tau();
  }
  return dpo;
}

kernels::ScoreDivergence DpoObjective::ScoreKind() const {
  switch (divergence_) {
    case DpoConfig::FORWARD_KL:
      return kernels::ScoreDivergence::kForwardKl;
    case DpoConfig::JS_DIVERGENCE:
      return kernels::ScoreDivergence::kJsDivergence;
    case DpoConfig::ALPHA_DIVERGENCE:
      return kernels::ScoreDivergence::kAlphaDivergence;
    default:
      return kernels::ScoreDivergence::kReverseKl;
  }
}

double DpoObjective::Score(double r, double* dscore) const {
  // The formula the device path runs too (kernels/objective_math.h).
  return kernels::objective_math::Score(ScoreKind(), alpha_divergence_, r,
                                        dscore);
}

double DpoObjective::Weighted(const float* logp, int tokens, int shared) const {
  double sum = 0;
  for (int t = 0; t < tokens; ++t) sum += TokenWeight(t, shared) * logp[t];
  return sum;
}

void DpoObjective::AddTerm(const Term& term,
                           std::vector<PairState>* pairs) const {
  const double w = term.weight, b = beta_;
  const DpoConfig::LossType type = term.type;
  if (type == DpoConfig::AOT || type == DpoConfig::AOT_UNPAIRED) {
    // Sorted within the micro-batch; each sorted difference's gradient goes
    // back to the pairs it was taken from.
    const size_t n = pairs->size();
    std::vector<double> x(n), y(n);
    for (size_t i = 0; i < n; ++i) {
      const PairState& p = (*pairs)[i];
      if (type == DpoConfig::AOT) {
        x[i] = p.logp_chosen - p.logp_rejected;
        y[i] = p.ref_chosen - p.ref_rejected;
      } else {
        x[i] = p.ratio_chosen;
        y[i] = p.ratio_rejected;
      }
    }
    const std::vector<int> px = SortOrder(x), py = SortOrder(y);
    for (size_t j = 0; j < n; ++j) {
      double d = 0;
      const double loss = kernels::objective_math::SmoothedLogistic(
                              b, eps_, x[px[j]] - y[py[j]], &d) *
                          w;
      PairState& from_x = (*pairs)[px[j]];
      (*pairs)[j].loss += loss;
      if (type == DpoConfig::AOT) {
        // δ_j = (L_w − L_l)_(j) − (L̃_w − L̃_l)_(j); the reference's side is
        // constant.
        from_x.dchosen += w * d;
        from_x.drejected -= w * d;
      } else {
        from_x.dchosen += w * d;
        (*pairs)[py[j]].drejected -= w * d;
      }
    }
    return;
  }
  // The per-pair math is kernels/objective_math.h's, which the CUDA kernels
  // run too (docs/objectives.md §7): on the f-divergence's scores for the
  // losses on Δ, chained through ∂score/∂L, on the raw log-ratios otherwise.
  kernels::ObjectiveParams params;
  params.beta = b;
  params.label_smoothing = eps_;
  params.discopop_tau = discopop_tau_;
  const kernels::PairLoss loss = *DevicePairLoss(type);
  const bool on_scores = OnScoreDifference(type);
  for (PairState& p : *pairs) {
    kernels::objective_math::PairTerms terms;
    kernels::objective_math::AddPairLoss(
        params, loss, w, on_scores ? p.score_chosen : p.ratio_chosen,
        on_scores ? p.score_rejected : p.ratio_rejected, p.chosen_tokens,
        p.rejected_tokens, &terms);
    p.loss += terms.loss;
    p.dchosen += on_scores ? terms.dchosen * p.dscore_chosen : terms.dchosen;
    p.drejected +=
        on_scores ? terms.drejected * p.dscore_rejected : terms.drejected;
  }
}

double DpoObjective::Loss(const MicroBatchView& batch,
                          std::vector<double>* dloss_dlogp,
                          MetricSums* sums) const {
  const std::vector<SequenceScores>& scores = *batch.scores;
  const std::vector<float>& row = *batch.row_logp;
  const size_t n = batch.examples->size();
  const bool ld = ld_alpha_ >= 0;
  int64_t total_tokens = 0;
  for (const SequenceScores& s : scores) total_tokens += s.tokens;
  CheckSameLength("DpoObjective::Loss", "row_logp", total_tokens, row.size());
  const std::vector<float>* log_sum_sq = batch.row_log_sum_sq_probs;
  if (use_weighting_) {
    if (log_sum_sq == nullptr) {
      std::fprintf(stderr,
                   "DpoObjective::Loss: use_weighting needs "
                   "MicroBatchView::row_log_sum_sq_probs\n");
      std::abort();
    }
    CheckSameLength("DpoObjective::Loss", "row_log_sum_sq_probs", row.size(),
                    log_sum_sq->size());
  }

  std::vector<PairState> pairs(n);
  std::vector<double> pair_weight(n, 1.0);  // WPO's w_w·w_l
  std::vector<int64_t> chosen_offset(n);
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    const int ex = (*batch.examples)[i];
    const SequenceScores& sw = scores[2 * i];
    const SequenceScores& sl = scores[2 * i + 1];
    PairState& p = pairs[i];
    p.chosen_tokens = sw.tokens;
    p.rejected_tokens = sl.tokens;
    chosen_offset[i] = offset;
    const float* lw = row.data() + offset;
    const float* ll = lw + sw.tokens;
    offset += sw.tokens + sl.tokens;
    const int shared = std::min(sw.tokens, sl.tokens);
    if (ld) {
      p.logp_chosen = Weighted(lw, sw.tokens, shared);
      p.logp_rejected = Weighted(ll, sl.tokens, shared);
      const absl::Span<const float> rw = batch.reference->TokenLogps(ex, 0);
      const absl::Span<const float> rl = batch.reference->TokenLogps(ex, 1);
      CheckSameLength("DpoObjective::Loss", "reference chosen", sw.tokens,
                      rw.size());
      CheckSameLength("DpoObjective::Loss", "reference rejected", sl.tokens,
                      rl.size());
      p.ref_chosen = Weighted(rw.data(), sw.tokens, shared);
      p.ref_rejected = Weighted(rl.data(), sl.tokens, shared);
    } else {
      p.logp_chosen = sw.logp;
      p.logp_rejected = sl.logp;
      p.ref_chosen = batch.reference->SequenceLogp(ex, 0);
      p.ref_rejected = batch.reference->SequenceLogp(ex, 1);
    }
    p.ratio_chosen = p.logp_chosen - p.ref_chosen;
    p.ratio_rejected = p.logp_rejected - p.ref_rejected;
    p.score_chosen = Score(p.ratio_chosen, &p.dscore_chosen);
    p.score_rejected = Score(p.ratio_rejected, &p.dscore_rejected);
    if (use_weighting_) {
      // w = exp(mean_t(ℓ_t − log Σ_v p_v²)) of each response, a constant.
      auto weight = [&](const float* logp, int64_t at, int tokens) {
        double sum = 0;
        for (int t = 0; t < tokens; ++t) sum += logp[t] - (*log_sum_sq)[at + t];
        return std::exp(sum / std::max(tokens, 1));
      };
      pair_weight[i] = weight(lw, chosen_offset[i], sw.tokens) *
                       weight(ll, chosen_offset[i] + sw.tokens, sl.tokens);
    }
  }

  double sft_weight = 0;
  for (const Term& term : terms_) {
    if (term.type == DpoConfig::SFT) {
      sft_weight += term.weight;
    } else {
      AddTerm(term, &pairs);
    }
  }
  // SFT: the mean NLL over the global batch's chosen tokens, pooled (so it
  // does not depend on how the batch is split, docs/objectives.md §1). In
  // Loss's units (sums over pairs, later divided by the pair count) each
  // chosen token's NLL counts pairs / chosen tokens of the global batch; a
  // micro-batch scored on its own is its own global batch. Each pair is
  // attributed its own chosen tokens' share. The config refuses WPO with
  // SFT (TRL cannot weight its batch-level SFT term either).
  double sft_per_token = 0;
  if (sft_weight != 0) {
    double pairs_per_token = batch.token_denominator > 0
                                 ? batch.denominator / batch.token_denominator
                                 : 0;
    if (!(pairs_per_token > 0)) {
      int64_t chosen_tokens = 0;
      for (size_t i = 0; i < n; ++i) chosen_tokens += pairs[i].chosen_tokens;
      pairs_per_token =
          static_cast<double>(n) /
          static_cast<double>(std::max<int64_t>(chosen_tokens, 1));
    }
    for (size_t i = 0; i < n; ++i) {
      const float* lw = row.data() + chosen_offset[i];
      double chosen_sum = 0;
      for (int t = 0; t < pairs[i].chosen_tokens; ++t) chosen_sum += lw[t];
      pairs[i].loss += sft_weight * -chosen_sum * pairs_per_token;
    }
    sft_per_token = -sft_weight * pairs_per_token;
  }

  dloss_dlogp->assign(row.size(), 0.0);
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    const PairState& p = pairs[i];
    const double wt = pair_weight[i];
    const int shared = std::min(p.chosen_tokens, p.rejected_tokens);
    double* dw = dloss_dlogp->data() + chosen_offset[i];
    double* dl = dw + p.chosen_tokens;
    for (int t = 0; t < p.chosen_tokens; ++t) {
      dw[t] = wt * p.dchosen * TokenWeight(t, shared) + sft_per_token;
    }
    for (int t = 0; t < p.rejected_tokens; ++t) {
      dl[t] = wt * p.drejected * TokenWeight(t, shared);
    }
    const double loss = wt * p.loss;
    total += loss;

    const SequenceScores& sw = scores[2 * i];
    const SequenceScores& sl = scores[2 * i + 1];
    const double reward_w = beta_ * p.ratio_chosen;
    const double reward_l = beta_ * p.ratio_rejected;
    sums->Add("loss", loss);
    sums->Add("rewards/chosen", reward_w);
    sums->Add("rewards/rejected", reward_l);
    sums->Add("rewards/margins", reward_w - reward_l);
    sums->Add("rewards/accuracies", reward_w > reward_l ? 1.0 : 0.0);
    sums->Add("logps/chosen", p.logp_chosen);
    sums->Add("logps/rejected", p.logp_rejected);
    sums->Add("logits/chosen", sw.logit_sum,
              static_cast<double>(sw.tokens) * vocab_);
    sums->Add("logits/rejected", sl.logit_sum,
              static_cast<double>(sl.tokens) * vocab_);
    // TRL 1.x: argmax == label over the chosen responses' tokens, pooled.
    sums->Add("mean_token_accuracy", sw.correct, sw.tokens);
    sums->Add("ranking/accuracy", sw.logp >= sl.logp ? 1.0 : 0.0);
    sums->Add("ranking/accuracy_len_norm",
              sw.logp / sw.tokens >= sl.logp / sl.tokens ? 1.0 : 0.0);
  }
  return total;
}

bool IdealizedRankingCorrect(const PairReference& ref, double beta,
                             double alpha) {
  return ref.chosen - ref.rejected + std::log(alpha / (1.0 - alpha)) / beta >
         0.0;
}

void DpoObjective::AddEvalMetrics(const MicroBatchView& batch,
                                  const std::vector<data::Example>& examples,
                                  MetricSums* sums) const {
  const std::vector<SequenceScores>& scores = *batch.scores;
  for (size_t i = 0; i < batch.examples->size(); ++i) {
    const int ex = (*batch.examples)[i];
    const PairReference ref{batch.reference->SequenceLogp(ex, 0),
                            batch.reference->SequenceLogp(ex, 1)};
    const float fraction = examples[ex].preference_fraction;
    const double alpha = fraction > 0 ? fraction : kDefaultPreferenceFraction;
    const double ideal = IdealizedRankingCorrect(ref, beta_, alpha) ? 1.0 : 0.0;
    // The same test as Loss's ranking/accuracy.
    const double actual =
        scores[2 * i].logp >= scores[2 * i + 1].logp ? 1.0 : 0.0;
    sums->Add("ranking/idealized_accuracy", ideal);
    sums->Add("ranking/alignment_gap", ideal - actual);
  }
}

double DpoObjective::Denominator(const std::vector<data::Example>&,
                                 const std::vector<int>& batch) const {
  return static_cast<double>(batch.size());
}

double DpoObjective::TokenDenominator(
    const std::vector<data::Example>& examples,
    const std::vector<int>& batch) const {
  for (const Term& term : terms_) {
    if (term.type == DpoConfig::SFT) {
      return ChosenResponseTokens(examples, batch);
    }
  }
  return 0;
}

bool DpoObjective::DeviceParams(kernels::ObjectiveParams* params) const {
  kernels::ObjectiveParams p;
  p.kind = kernels::ObjectiveKind::kPreference;
  p.beta = beta_;
  p.label_smoothing = eps_;
  p.discopop_tau = discopop_tau_;
  p.score = ScoreKind();
  p.score_alpha = alpha_divergence_;
  p.ld_alpha = ld_alpha_;
  p.use_weighting = use_weighting_;
  for (const Term& term : terms_) {
    if (term.type == DpoConfig::SFT) {
      p.sft_weight += term.weight;
      continue;
    }
    const std::optional<kernels::PairLoss> loss = DevicePairLoss(term.type);
    if (!loss.has_value()) return false;
    if (p.num_terms == kernels::kMaxPairLossTerms) return false;
    p.loss[p.num_terms] = *loss;
    p.weight[p.num_terms] = term.weight;
    ++p.num_terms;
  }
  *params = p;
  return true;
}

void DpoObjective::Coefficients(const MicroBatchView& batch, double denominator,
                                std::vector<float>* coef,
                                MetricSums* sums) const {
  std::vector<double> dloss_dlogp;
  Loss(batch, &dloss_dlogp, sums);
  // G_t = −∂loss/∂ℓ_t (the kernel writes G_t·(softmax − onehot)).
  coef->resize(dloss_dlogp.size());
  for (size_t t = 0; t < dloss_dlogp.size(); ++t) {
    (*coef)[t] = static_cast<float>(-dloss_dlogp[t] / denominator);
  }
}

}  // namespace prefopt::objectives
