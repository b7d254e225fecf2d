// Evaluation on held-out data (data.eval_files): every metric of the
// objective over the whole set, without gradients, split across the
// data-parallel ranks, plus the metrics only an evaluation reports:
// - the objective's own (Objective::AddEvalMetrics; DPO's
//   ranking/idealized_accuracy and ranking/alignment_gap,
//   docs/objectives.md §1);
// - greedy/exact_match: 1 when greedy decoding from the prompt reproduces the
//   reference response (the chosen one, or the completion) token for token,
//   end-of-sequence included. Greedy decoding emits the reference exactly
//   when the argmax at every response position under teacher forcing is the
//   reference token, so this needs no generation;
// - demonstrations: sft/loss (NLL per response token) and
//   mean_token_accuracy for every objective, so that runs of different
//   objectives compare on the same numbers.
// The training loop evaluates every TrainConfig.eval_every_steps steps and
// after the last; `prefopt eval` evaluates a model folder (EvaluateModel).
#ifndef PREFOPT_TRAINER_LOOP_EVALUATOR_H_
#define PREFOPT_TRAINER_LOOP_EVALUATOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "proto/config.pb.h"
#include "trainer/data/batch.h"
#include "trainer/data/examples.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/objective.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/objectives/reference_values.h"

namespace prefopt::loop {

// Reads data.eval_files in the shape `objective` trains on, truncated (and,
// for KTO, its KL completions paired, KlChunk) as the training data of
// `world_size` ranks is.
absl::StatusOr<data::Dataset> ReadEvalData(
    const TrainConfig& config, const objectives::Objective& objective,
    int vocab_size, int world_size);

class Evaluator {
 public:
  // Evaluates `objective` (not owned) on `data`, whose reference values are
  // `references` (empty when the objective needs none), `micro_batch`
  // examples per forward pass. Each rank of `comm` (null: one process) takes
  // a contiguous share of the examples; the set must have at least one
  // example per rank.
  static absl::StatusOr<std::unique_ptr<Evaluator>> Create(
      const objectives::Objective* objective, data::Dataset data,
      objectives::ReferenceValues references, int micro_batch,
      comm::Communicator* comm);

  // Metric name → mean over the whole set, the same on every rank. Runs
  // `policy` forward (its capacity must hold micro_batch examples of the
  // set) and `output` pass 1; accumulates no gradient. `progress`, if set,
  // gets (examples done, examples of this rank).
  absl::StatusOr<std::map<std::string, double>> Evaluate(
      model::Decoder& policy, objectives::ChunkedOutputLayer& output,
      const std::function<void(int64_t, int64_t)>& progress = nullptr);

  const data::Dataset& data() const { return data_; }

 private:
  Evaluator(const objectives::Objective* objective, data::Dataset data,
            objectives::ReferenceValues references, int micro_batch,
            comm::Communicator* comm);

  const objectives::Objective* objective_;
  data::Dataset data_;
  objectives::ReferenceValues references_;
  int micro_batch_;
  comm::Communicator* comm_;
  std::vector<int> local_;  // this rank's examples
  data::Batch batch_;
  std::vector<float> coef_;
};

// `metrics` with every name prefixed: "eval_" for metrics.jsonl (TRL's
// names), "eval/" for TensorBoard.
std::map<std::string, double> WithPrefix(
    const std::map<std::string, double>& metrics, const std::string& prefix);

// One line for a log: "eval at step 40: loss 0.4123  rewards/accuracies
// 0.8450 ..." with the headline metrics present.
std::string EvalSummaryLine(int64_t step,
                            const std::map<std::string, double>& metrics);

// Every metric, one per line, names padded to one column, for a terminal.
std::string EvalTableText(const std::map<std::string, double>& metrics);

// (name, value) rows for report.html's evaluation table.
std::vector<std::pair<std::string, std::string>> EvalReportRows(
    const std::map<std::string, double>& metrics);

// Writes `path` (atomically): a JSON object of every metric and "examples",
// "model" and (when given: evaluations during training) "step", keys sorted,
// one member per line, non-finite values as null.
absl::Status WriteEvalJson(const std::string& path, std::optional<int64_t> step,
                           int64_t examples, const std::string& model,
                           const std::map<std::string, double>& metrics);

struct ModelEvaluation {
  std::map<std::string, double> metrics;
  int64_t examples = 0;
};

// `prefopt eval`: evaluates the Hugging Face model folder `model_dir` (a
// checkpoint folder is one) on the config's data.eval_files with the
// config's objective. Empty `model_dir`: the config's own starting model
// (model.hf_path, or the from-scratch initialization of model and seed).
// Objectives that need reference log-probs get them from the model training
// used as reference: model.reference_hf_path, else model.hf_path, else the
// from-scratch initialization; they are cached in <run_dir>/reference_cache.
// Notices go to `log`; `progress` gets (phase, done, total).
absl::StatusOr<ModelEvaluation> EvaluateModel(
    const TrainConfig& config, const std::string& model_dir, std::ostream& log,
    comm::Communicator* comm,
    const std::function<void(const std::string&, int64_t, int64_t)>& progress =
        nullptr);

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_EVALUATOR_H_
