#include "trainer/objectives/orpo.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/objective_math.h"
#include "trainer/objectives/reference_free.h"

namespace prefopt::objectives {

absl::StatusOr<std::unique_ptr<OrpoObjective>> OrpoObjective::Create(
    const OrpoConfig& config, int vocab_size) {
  if (!(config.beta() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.orpo.beta: must be > 0, got ", config.beta()));
  }
  return std::unique_ptr<OrpoObjective>(
      new OrpoObjective(config.beta(), vocab_size));
}

OrpoObjective::OrpoObjective(double beta, int vocab_size) : vocab_(vocab_size) {
  params_.kind = kernels::ObjectiveKind::kOrpo;
  params_.beta = beta;
}

bool OrpoObjective::DeviceParams(kernels::ObjectiveParams* params) const {
  *params = params_;
  return true;
}

double OrpoObjective::Denominator(const std::vector<data::Example>&,
                                  const std::vector<int>& batch) const {
  return static_cast<double>(batch.size());
}

double OrpoObjective::TokenDenominator(
    const std::vector<data::Example>& examples,
    const std::vector<int>& batch) const {
  double prompt_tokens = 0;
  for (int i : batch) {
    const data::Example& e = examples[i];
    prompt_tokens += std::max<double>(
        0, static_cast<double>(e.context.size() + e.prompt.size()) - 1);
  }
  return ChosenResponseTokens(examples, batch) + prompt_tokens;
}

void OrpoObjective::Coefficients(const MicroBatchView& batch,
                                 double denominator, std::vector<float>* coef,
                                 MetricSums* sums) const {
  // scores: the pairs' chosen and rejected responses, then each pair's prompt
  // rows (scores_prompts()); coef follows the same order.
  const std::vector<SequenceScores>& scores = *batch.scores;
  const size_t n = batch.examples->size();
  const double tokens = batch.token_denominator;
  coef->clear();
  for (size_t i = 0; i < n; ++i) {
    const SequenceScores& chosen = scores[2 * i];
    const SequenceScores& rejected = scores[2 * i + 1];
    const SequenceScores& prompt = scores[2 * n + i];
    const kernels::objective_math::ReferenceFreePair g =
        kernels::objective_math::OrpoPair(params_, chosen.logp, rejected.logp,
                                          chosen.tokens, rejected.tokens);
    AddPairMetrics(chosen, rejected, g.logp_chosen, g.logp_rejected,
                   g.reward_chosen, g.reward_rejected, vocab_, sums);
    // TRL's names: log_odds_ratio is log σ(log-odds ratio), log_odds_chosen
    // the log-odds ratio itself.
    sums->Add("log_odds_ratio", g.log_odds_ratio);
    sums->Add("log_odds_chosen", g.log_odds);
    // loss = NLL over the chosen sequences' tokens (a mean over the global
    // batch's) + mean over pairs of the odds-ratio term; each pair's NLL
    // share is scaled to the pair count so that the "loss" metric's mean over
    // pairs is the whole loss.
    const double nll = -(chosen.logp + prompt.logp);
    sums->Add("loss", g.loss + nll * denominator / tokens);
    sums->Add("nll_loss", nll, chosen.tokens + prompt.tokens);
    coef->insert(coef->end(), chosen.tokens,
                 static_cast<float>(-(g.dchosen / denominator - 1.0 / tokens)));
    coef->insert(coef->end(), rejected.tokens,
                 static_cast<float>(-g.drejected / denominator));
  }
  for (size_t i = 0; i < n; ++i) {
    coef->insert(coef->end(), scores[2 * n + i].tokens,
                 static_cast<float>(1.0 / tokens));
  }
}

}  // namespace prefopt::objectives
