#include "trainer/objectives/sft.h"

namespace prefopt::objectives {

double SftSequence(const SequenceScores& scores, double global_tokens,
                   MetricSums* sums, std::vector<float>* coef) {
  const double loss = -scores.logp;
  // Token means: each sequence contributes its sum and its token count, so
  // the logged value is Σ_s loss_s / Σ_s k_s over whatever was merged.
  sums->Add("loss", loss, scores.tokens);
  sums->Add("mean_token_accuracy", scores.correct, scores.tokens);
  coef->insert(coef->end(), scores.tokens,
               static_cast<float>(1.0 / global_tokens));
  return loss;
}

}  // namespace prefopt::objectives
