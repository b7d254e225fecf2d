// Pieces shared by the reference-free preference objectives, CPO (with SimPO
// and AlphaPO) and ORPO (docs/objectives.md §8): ORPO's prompt segments and
// the metrics both log (their pair terms are kernels/objective_math.h's).
#ifndef PREFOPT_TRAINER_OBJECTIVES_REFERENCE_FREE_H_
#define PREFOPT_TRAINER_OBJECTIVES_REFERENCE_FREE_H_

#include <algorithm>
#include <vector>

#include "trainer/data/examples.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::objectives {

// `segments` (a micro-batch's response segments, data::BuildBatch's) followed
// by one segment per example of `micro` over the rows of its first sequence
// that predict its prompt tokens 2..P (P = context + prompt tokens; none
// when P = 1), for an objective whose scores_prompts() is true.
inline std::vector<ResponseSegment> WithPromptSegments(
    const std::vector<ResponseSegment>& segments,
    const std::vector<data::Example>& examples, const std::vector<int>& micro) {
  std::vector<ResponseSegment> out = segments;
  size_t first = 0;  // the example's first sequence
  for (int ex : micro) {
    const data::Example& e = examples[ex];
    const int prompt_rows =
        std::max(0, static_cast<int>(e.context.size() + e.prompt.size()) - 1);
    // The first response row predicts the first response token; the rows
    // before it predict the prompt's.
    out.push_back({segments[first].row - prompt_rows, prompt_rows});
    first += e.num_responses();
  }
  return out;
}

// The metrics CPO and ORPO share (TRL's names), for one pair whose responses
// score `logp_chosen` and `logp_rejected` (averaged or summed, as the loss
// uses them) and whose rewards are `reward_chosen` and `reward_rejected`.
// logits/* are pooled over the response tokens (docs/objectives.md §8 says
// how TRL's differ); ranking/* are the DPO family's (§1).
inline void AddPairMetrics(const SequenceScores& chosen,
                           const SequenceScores& rejected, double logp_chosen,
                           double logp_rejected, double reward_chosen,
                           double reward_rejected, int vocab,
                           MetricSums* sums) {
  const double kw = chosen.tokens, kl = rejected.tokens;
  sums->Add("rewards/chosen", reward_chosen);
  sums->Add("rewards/rejected", reward_rejected);
  sums->Add("rewards/margins", reward_chosen - reward_rejected);
  sums->Add("rewards/accuracies", reward_chosen > reward_rejected ? 1.0 : 0.0);
  sums->Add("logps/chosen", logp_chosen);
  sums->Add("logps/rejected", logp_rejected);
  sums->Add("logits/chosen", chosen.logit_sum, kw * vocab);
  sums->Add("logits/rejected", rejected.logit_sum, kl * vocab);
  sums->Add("ranking/accuracy", chosen.logp >= rejected.logp ? 1.0 : 0.0);
  sums->Add("ranking/accuracy_len_norm",
            chosen.logp / kw >= rejected.logp / kl ? 1.0 : 0.0);
}

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_REFERENCE_FREE_H_
