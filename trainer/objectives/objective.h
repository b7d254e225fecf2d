// The plug-in interface of the objectives whose logit gradient has the
// coefficient form G_t·(softmax − onehot) (docs/objectives.md §0): DPO and its
// variants, KTO, SFT, PRIOR and implicit-reward SFT. An objective says which
// data and reference values it needs, how its loss is normalized over a global
// batch, and turns one micro-batch's policy log-probs into per-token
// coefficients and metrics. The chunked output layer and the loop do not change
// when one is added.
#ifndef PREFOPT_TRAINER_OBJECTIVES_OBJECTIVE_H_
#define PREFOPT_TRAINER_OBJECTIVES_OBJECTIVE_H_

#include <map>
#include <string>
#include <vector>

#include "trainer/data/examples.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/objectives/reference_values.h"

namespace prefopt::objectives {

enum class ReferenceNeeds {
  kNone,
  kSequenceLogps,  // L̃ per response
  kTokenLogps,     // ℓ̃_t per response token (and L̃)
};

// One micro-batch as the objective sees it. Sequences are in data::BuildBatch
// order (each example's responses in turn); row_logp holds the policy's ℓ_t
// of every response token, sequence after sequence.
struct MicroBatchView {
  const std::vector<int>* examples;           // dataset indices
  const std::vector<SequenceScores>* scores;  // per sequence
  const std::vector<float>* row_logp;         // per response token
  const ReferenceValues* reference;           // null for kNone
  // log Σ_v p_v² of every response token's softmax, in row_logp's order (WPO's
  // weights); null unless the objective's needs_row_log_sum_sq_probs().
  const std::vector<float>* row_log_sum_sq_probs = nullptr;
  // The global batch's Objective::Denominator and TokenDenominator (0 when
  // the caller scores one micro-batch on its own).
  double denominator = 0;
  double token_denominator = 0;
  // The dataset `examples` indexes (its labels, for KTO); may be null for
  // objectives that read nothing from it.
  const std::vector<data::Example>* dataset = nullptr;
  // The pre-pass sums of the whole global batch, summed over the ranks
  // (Objective::AddPrepass); null unless the objective has_prepass().
  const MetricSums* prepass = nullptr;
};

// The number of chosen-response tokens of `batch`: the denominator of a
// chosen-response NLL term (Objective::TokenDenominator).
inline double ChosenResponseTokens(const std::vector<data::Example>& examples,
                                   const std::vector<int>& batch) {
  double tokens = 0;
  for (int i : batch) tokens += static_cast<double>(examples[i].chosen.size());
  return tokens;
}

// Adds TRL's `entropy` metric of one micro-batch to `sums`: the mean over
// every response token (chosen and rejected alike) of the entropy of the
// policy's next-token softmax (docs/objectives.md §0). The first
// `response_sequences` entries of `scores` are the responses'; any after them
// score prompts (Objective::scores_prompts) and are left out. The loop adds it
// for every objective, so no objective adds it itself.
inline void AddEntropyMetric(const std::vector<SequenceScores>& scores,
                             size_t response_sequences, MetricSums* sums) {
  for (size_t i = 0; i < response_sequences; ++i) {
    sums->Add("entropy", scores[i].entropy_sum, scores[i].tokens);
  }
}

class Objective {
 public:
  virtual ~Objective() = default;

  virtual data::ExampleKind example_kind() const = 0;
  virtual ReferenceNeeds reference_needs() const = 0;
  // Whether the reference model scores the example with its context (PRIOR's
  // reference never sees it).
  virtual bool reference_sees_context() const { return true; }
  // Whether the objective also scores the rows that predict each example's
  // prompt tokens 2..P of its first sequence: ORPO's NLL, as TRL's, covers the
  // chosen sequence's prompt too (docs/objectives.md §8). The loop then passes
  // the output layer PromptSegments(...) after the response segments, so
  // `scores` and `row_logp` hold one more entry per example after the
  // responses', and Coefficients writes their G_t in that order too.
  virtual bool scores_prompts() const { return false; }
  // Whether Coefficients reads MicroBatchView::row_log_sum_sq_probs.
  virtual bool needs_row_log_sum_sq_probs() const { return false; }

  // The global-batch denominator of the loss (docs/objectives.md §0): the
  // number of pairs, of sequences, or of response tokens in `batch`.
  virtual double Denominator(const std::vector<data::Example>& examples,
                             const std::vector<int>& batch) const = 0;

  // A second global-batch count, for a loss term that is a mean over tokens
  // while Denominator counts pairs: CPO's and ORPO's chosen-response NLL
  // (docs/objectives.md §8) and DPO's SFT term (§1) are means over the
  // chosen responses' tokens. The loop hands it to Coefficients as
  // MicroBatchView::token_denominator. 0 (unused) by default.
  virtual double TokenDenominator(
      const std::vector<data::Example>& /*examples*/,
      const std::vector<int>& /*batch*/) const {
    return 0;
  }

  // Writes G_t for every response token of the micro-batch (row_logp's
  // order), already divided by `denominator`, and adds the micro-batch's
  // loss and metrics (sums whose counts make global-batch means) to `sums`.
  virtual void Coefficients(const MicroBatchView& batch, double denominator,
                            std::vector<float>* coef,
                            MetricSums* sums) const = 0;

  // Whether the loss needs a constant of the whole global batch before any of
  // its gradients, estimated from sequences the policy scores without a
  // gradient (KTO's KL estimate z₀ from mismatched completions,
  // docs/objectives.md §9). The loop then scores response 1 of every example
  // of the global batch first (policy and reference), hands each micro-batch
  // to AddPrepass, sums the results over the ranks and passes them to
  // Coefficients as MicroBatchView::prepass; the training pass itself builds
  // response 0 of each example only.
  virtual bool has_prepass() const { return false; }
  // Adds one pre-pass micro-batch to `sums`: `batch.scores` hold response 1
  // of each example, `batch.reference` its reference values.
  virtual void AddPrepass(const MicroBatchView& /*batch*/,
                          MetricSums* /*sums*/) const {}
  // The objective as Backend::ObjectiveCoefficients computes it on the
  // device (docs/objectives.md §7), when it can: fills `params` (all but the
  // per-batch denominator and pairs_per_token) and returns true. False (the
  // default) keeps the objective on the host, where Coefficients is the
  // reference the device form is tested against.
  virtual bool DeviceParams(kernels::ObjectiveParams* /*params*/) const {
    return false;
  }
  // Sets what the device form's `params` take from the global batch's
  // pre-pass sums (`prepass`, summed over the ranks; KTO's z₀) before a
  // micro-batch's coefficients. Nothing by default.
  virtual void SetDevicePrepassParams(
      const MetricSums* /*prepass*/,
      kernels::ObjectiveParams* /*params*/) const {}

  // Adjusts the reported metrics of a global batch once its sums are summed
  // over the ranks: `metrics` holds sums.Means(). An objective may drop a
  // metric no example contributed to or add one derived from others (KTO's
  // rewards/margins). Nothing by default.
  virtual void FinishMetrics(const MetricSums& /*sums*/,
                             std::map<std::string, double>* /*metrics*/) const {
  }

  // Adds the metrics that only an evaluation reports for one micro-batch
  // (Coefficients has added the training ones); `examples` is the dataset
  // batch.examples indexes. None by default.
  virtual void AddEvalMetrics(const MicroBatchView& /*batch*/,
                              const std::vector<data::Example>& /*examples*/,
                              MetricSums* /*sums*/) const {}
};

// How many sequences one example adds to a micro-batch at most, which sizes
// the decoder: two for pairs, and two for a pre-pass objective (KTO scores
// the completion and the KL completion), else one.
inline int SequencesPerExample(const Objective& objective) {
  return objective.example_kind() == data::ExampleKind::kPreference ||
                 objective.has_prepass()
             ? 2
             : 1;
}

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_OBJECTIVE_H_
