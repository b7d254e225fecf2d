#include "trainer/objectives/orpo.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/objectives/logistic.h"
#include "trainer/objectives/reference_free.h"

namespace prefopt::objectives {

double Log1mExp(double x) {
  constexpr double kMinusLn2 = -0.6931471805599453;
  return x < kMinusLn2 ? std::log1p(-std::exp(x)) : std::log(-std::expm1(x));
}

absl::StatusOr<std::unique_ptr<OrpoObjective>> OrpoObjective::Create(
    const OrpoConfig& config, int vocab_size) {
  if (!(config.beta() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.orpo.beta: must be > 0, got ", config.beta()));
  }
  return std::unique_ptr<OrpoObjective>(
      new OrpoObjective(config.beta(), vocab_size));
}

ReferenceFreePairGradient OrpoObjective::Pair(const SequenceScores& chosen,
                                              const SequenceScores& rejected,
                                              MetricSums* sums) const {
  const double kw = chosen.tokens, kl = rejected.tokens;
  const double xw = chosen.logp / kw, xl = rejected.logp / kl;
  // log-odds(p) = log p − log(1 − p) on the averaged log-probs x;
  // d/dx log-odds = 1/(1 − e^x) = −1/expm1(x).
  const double log_odds = (xw - xl) - (Log1mExp(xw) - Log1mExp(xl));
  const double ratio = -Softplus(-log_odds);  // log σ(log_odds)
  const double dloss_dodds = -beta_ * Sigmoid(-log_odds);
  AddPairMetrics(chosen, rejected, xw, xl, beta_ * xw, beta_ * xl, vocab_,
                 sums);
  // TRL's names: log_odds_ratio is log σ(log-odds ratio), log_odds_chosen the
  // log-odds ratio itself.
  sums->Add("log_odds_ratio", ratio);
  sums->Add("log_odds_chosen", log_odds);
  ReferenceFreePairGradient g;
  g.loss = -beta_ * ratio;
  g.dloss_dlogp_chosen = dloss_dodds * (-1.0 / std::expm1(xw)) / kw;
  g.dloss_dlogp_rejected = -dloss_dodds * (-1.0 / std::expm1(xl)) / kl;
  return g;
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
    const ReferenceFreePairGradient g = Pair(chosen, rejected, sums);
    // loss = NLL over the chosen sequences' tokens (a mean over the global
    // batch's) + mean over pairs of the odds-ratio term; each pair's NLL
    // share is scaled to the pair count so that the "loss" metric's mean over
    // pairs is the whole loss.
    const double nll = -(chosen.logp + prompt.logp);
    sums->Add("loss", g.loss + nll * denominator / tokens);
    sums->Add("nll_loss", nll, chosen.tokens + prompt.tokens);
    coef->insert(coef->end(), chosen.tokens,
                 static_cast<float>(
                     -(g.dloss_dlogp_chosen / denominator - 1.0 / tokens)));
    coef->insert(coef->end(), rejected.tokens,
                 static_cast<float>(-g.dloss_dlogp_rejected / denominator));
  }
  for (size_t i = 0; i < n; ++i) {
    coef->insert(coef->end(), scores[2 * n + i].tokens,
                 static_cast<float>(1.0 / tokens));
  }
}

}  // namespace prefopt::objectives
