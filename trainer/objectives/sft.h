// Plain supervised fine-tuning (docs/objectives.md §5): the negative
// log-likelihood of the response tokens, averaged over the response tokens of
// the global batch.
#ifndef PREFOPT_TRAINER_OBJECTIVES_SFT_H_
#define PREFOPT_TRAINER_OBJECTIVES_SFT_H_

#include <vector>

#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::objectives {

// One demonstration with pass 1's scores of its response tokens. Returns the
// sequence's loss −Σ_t ℓ_t (a sum: the batch loss is Σ_s loss_s divided by
// `global_tokens`, the response tokens of the global batch). Appends the
// sequence's `scores.tokens` coefficients G_t = 1/global_tokens to `coef` and
// adds the metrics `loss` (NLL per token) and `mean_token_accuracy` (argmax ==
// label over response tokens) to `sums`.
double SftSequence(const SequenceScores& scores, double global_tokens,
                   MetricSums* sums, std::vector<float>* coef);

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_SFT_H_
