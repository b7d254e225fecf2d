// An objective's per-token coefficients and metrics computed by the backend
// (Backend::ObjectiveCoefficients, docs/objectives.md §7) from pass 1's
// per-row values where they lie, for a backend whose memory the host cannot
// address: per micro-batch only the sequences' spans and reference values
// (sums, or per-token log-probs) go up, in one copy, and the metric sums come
// down once per step. The host objective
// (Objective::Coefficients) stays the reference; the loop uses this path only
// where Create says it covers the objective.
#ifndef PREFOPT_TRAINER_OBJECTIVES_DEVICE_OBJECTIVE_H_
#define PREFOPT_TRAINER_OBJECTIVES_DEVICE_OBJECTIVE_H_

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/objective.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/objectives/reference_values.h"

namespace prefopt::objectives {

class DeviceObjective {
 public:
  // The device path for `objective` on `backend`, or null where the host path
  // stays: a host-addressable backend (the CPU's), an objective without a
  // device form (Objective::DeviceParams), or one that needs what the device
  // path does not feed (a pre-pass other than KTO's). `max_seqs` bounds a
  // micro-batch's
  // sequences (without ORPO's prompts); `vocab` is V (the logits metrics'
  // counts).
  static std::unique_ptr<DeviceObjective> Create(const Objective& objective,
                                                 kernels::Backend* backend,
                                                 int max_seqs, int vocab);
  ~DeviceObjective();
  DeviceObjective(const DeviceObjective&) = delete;
  DeviceObjective& operator=(const DeviceObjective&) = delete;

  // One micro-batch after output->ForwardOnBackend over `segments` (one per
  // sequence, data::BuildBatch order, then ORPO's prompts as
  // WithPromptSegments adds them; with log Σ p² where the objective
  // needs_row_log_sum_sq_probs) of the dataset examples `examples`:
  // writes the coefficients into output->rows().coef and adds the metric
  // sums on the backend. `denominator` and `token_denominator` are the global
  // batch's (Objective::Denominator, TokenDenominator).
  // `dataset` is what `examples` index (KTO's labels); `prepass` the global
  // batch's pre-pass sums (KTO's z₀; null without a pre-pass).
  void Coefficients(const std::vector<ResponseSegment>& segments,
                    const std::vector<int>& examples,
                    const std::vector<data::Example>& dataset,
                    const ReferenceValues* reference, const MetricSums* prepass,
                    double denominator, double token_denominator,
                    ChunkedOutputLayer* output);

  // One micro-batch of the objective's pre-pass (KTO's KL completions,
  // response 1 of each example; Objective::AddPrepass) after
  // output->ForwardOnBackend over `segments`: adds its sums on the backend,
  // which TakeMetrics then hands over as AddPrepass names them.
  void Prepass(const std::vector<ResponseSegment>& segments,
               const std::vector<int>& examples,
               const ReferenceValues& reference, ChunkedOutputLayer* output);

  // Adds the metrics of the micro-batches since the last call to `sums`, with
  // the names and counts Objective::Coefficients and AddEntropyMetric give
  // them (one copy from the backend), and starts over. Nothing when no
  // micro-batch ran.
  void TakeMetrics(MetricSums* sums);

 private:
  DeviceObjective(const Objective* objective, kernels::Backend* backend,
                  const kernels::ObjectiveParams&, int max_seqs, int vocab);

  // Fills spans_ from `segments` (per_example per example) and clears the
  // staged reference values; returns the rows.
  int SetSpans(const std::vector<ResponseSegment>& segments, size_t per_example,
               size_t examples);
  // The counts of the metrics every pair objective reports (a mean over
  // pairs; logits/* over tokens × V).
  void AddPairCounts(double pairs, double chosen_tokens,
                     double rejected_tokens);
  // Backend::ObjectiveCoefficients over spans_ and the staged values.
  void Launch(const kernels::ObjectiveParams& params,
              ChunkedOutputLayer* output);

  const Objective* objective_;
  kernels::Backend* backend_;
  kernels::ObjectiveParams params_;
  int vocab_;
  float* metrics_;  // kObjectiveMetricCount doubles in backend memory
  // Host staging, reused: spans, reference sums (LD-weighted for LD-DPO),
  // per-token reference log-probs (uploaded with them), downloaded metric
  // sums.
  std::vector<kernels::SeqSpan> spans_;
  std::vector<kernels::SeqSpan> in_order_;  // ORPO's spans before reordering
  std::vector<double> reference_;
  std::vector<float> reference_tokens_;
  std::vector<double> metrics_host_;
  // The counts of the metric sums since the last TakeMetrics (the host knows
  // them from the segments alone).
  std::vector<double> counts_;
  // Metrics reported even with count 0 (KTO's absent side).
  std::vector<bool> reported_;
  bool pending_ = false;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_DEVICE_OBJECTIVE_H_
