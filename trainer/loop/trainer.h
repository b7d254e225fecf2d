// The training loop of one run: data → policy forward → chunked output layer
// and objective → backward → clip → AdamW, with global-batch semantics
// (docs/objectives.md §0) and metrics.jsonl. docs/architecture.md's "One step's
// data flow" is Trainer::Step.
#ifndef PREFOPT_TRAINER_LOOP_TRAINER_H_
#define PREFOPT_TRAINER_LOOP_TRAINER_H_

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "kernels/backend.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/data/batch.h"
#include "trainer/data/examples.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/evaluator.h"
#include "trainer/loop/gradient_sync.h"
#include "trainer/loop/reference_model.h"
#include "trainer/loop/sparsepo_step.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/metrics/metrics_log.h"
#include "trainer/metrics/progress.h"
#include "trainer/metrics/tensorboard_writer.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/device_objective.h"
#include "trainer/objectives/objective.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/objectives/reference_values.h"
#include "trainer/optim/optimizer.h"

namespace prefopt::loop {

class Trainer {
 public:
  // Prepares a run from a validated config: creates run_dir (writing the
  // resolved config there), reads the data, builds the policy (loaded or
  // initialized), the reference (log-probs cached, or a live frozen model
  // for model.live_reference and SparsePO), and the optimizer(s), then
  // resumes from the checkpoint config.resume() names, if any (the weights,
  // optimizer state and step; metrics.jsonl is cut back to the checkpoint's
  // lines).
  // Progress and notices go to `log` (rank 0 only): a live progress line
  // when `log_is_terminal`, plain lines otherwise (files, Slurm logs).
  // `comm` connects the data-parallel ranks (not owned; null: a single
  // process).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      const TrainConfig& config, std::ostream& log,
      comm::Communicator* comm = nullptr, bool log_is_terminal = false);
  ~Trainer();

  // Runs every remaining step, logging to metrics.jsonl and TensorBoard and
  // saving checkpoints (every save_every_steps and after the last step),
  // evaluating on data.eval_files every eval_every_steps and after the last
  // step, exports the policy to export_hf_path if set, then writes
  // report.html (also after a failed step, for diagnosis). With
  // save_on_signal, a stop signal from its start on (DeferStopSignals) makes
  // it save a checkpoint after the current step and return OK early (no
  // final evaluation or export); see stopped_by_signal().
  absl::Status Run();

  // Saves a checkpoint of the state after steps_done() steps into
  // run_dir/checkpoints (collective: every rank calls it). Returns the
  // checkpoint folder (on rank 0; empty on the others).
  absl::StatusOr<std::string> SaveCheckpoint();

  // One optimizer step over the next global batch. Returns the step's
  // metrics (loss, lr, grad_norm, the objective's metrics, tokens_per_second).
  absl::StatusOr<std::map<std::string, double>> Step();

  // Forward and backward over the examples `indices` as one global batch,
  // accumulating into the policy's gradients (no update). Returns the batch's
  // metrics and "tokens", the rows processed.
  std::map<std::string, double> ForwardBackward(
      const std::vector<int>& indices);

  int total_steps() const { return total_steps_; }
  int steps_done() const { return step_; }
  // The signal that stopped Run() before the last step, or 0.
  int stopped_by_signal() const { return stop_signal_; }
  const model::Decoder& policy() const { return *policy_; }
  // For tests (finite differences) and for restoring weights.
  model::Decoder& mutable_policy() { return *policy_; }
  const data::Dataset& dataset() const { return dataset_; }
  const objectives::ReferenceValues& references() const { return references_; }
  // The live reference model (model.live_reference; TR-DPO moves it during
  // training); null when the reference log-probs are precomputed.
  const model::Decoder* live_reference_model() const {
    return live_reference_ != nullptr ? &live_reference_->model() : nullptr;
  }
  // The SparsePO step (objective.sparsepo), holding the live reference and
  // the mask; null for the other objectives.
  SparsePoStep* sparsepo() { return sparsepo_.get(); }

  // Trained state outside the policy, for checkpoints only (never the Hugging
  // Face export): SparsePO's mask networks and their AdamW moments (see
  // SparsePoStep::CheckpointTensors); empty for the other objectives.
  std::vector<io::TensorToWrite> ExtraCheckpointTensors();
  absl::Status RestoreExtraCheckpointTensors(
      absl::Span<const io::TensorToWrite> tensors);
  // The metrics of the last evaluation (empty before the first).
  const std::map<std::string, double>& last_eval() const { return last_eval_; }

 private:
  Trainer(const TrainConfig& config, std::ostream& log,
          comm::Communicator* comm, bool log_is_terminal);
  absl::Status Init();
  // Creates backend_ for config device/precision and logs which it is; on
  // GPU ranks (world size > 1) also gpu_comm_. Collective.
  absl::Status SelectDevice();
  // ScorePrepass over `local`, this rank's share of a global batch, with the
  // precomputed or live reference, summed over the ranks of `comm`.
  absl::Status LocalPrepass(const std::vector<int>& local,
                            comm::Communicator* comm,
                            objectives::MetricSums* prepass);
  // Forward and backward over `local` (this rank's share of a global batch
  // whose loss denominators are `denominator` and `token_denominator`, and
  // whose pre-pass sums are `prepass`); adds metrics to `sums` and returns
  // the rows processed.
  int64_t LocalForwardBackward(const std::vector<int>& local,
                               double denominator, double token_denominator,
                               const objectives::MetricSums* prepass,
                               objectives::MetricSums* sums);
  // The objective's TokenDenominator of a global batch (0 for SparsePO).
  double TokenDenominator(const std::vector<int>& batch) const;
  // The loss denominator of a global batch (docs/objectives.md §0).
  double Denominator(const std::vector<int>& batch) const;
  // The gradients trained beside the policy's: SparsePO's mask networks'.
  // They are summed across ranks and clipped with the policy's as one vector.
  std::vector<optim::GradientSpan> ExtraGradients();
  // This rank's contiguous share of a global batch.
  std::vector<int> LocalShard(const std::vector<int>& global) const;
  // Where notices go: `log_` on rank 0, nowhere on the others.
  std::ostream& out();
  absl::Status BuildReferences();
  // Run() until an error or the last step, without the report.
  absl::Status RunSteps();
  // Indices of the examples of global batch `step`.
  std::vector<int> GlobalBatch(int step);
  // Evaluates on the held-out data (all ranks) and logs the result (rank 0).
  absl::Status Evaluate();
  // Writes the policy to export_hf_path (rank 0).
  absl::Status ExportPolicy();

  // Checkpoint steps (trainer_checkpoint.cc).
  // Agrees on a writer id for this launch's saves and resumes from the
  // checkpoint config_.resume() names, if any.
  absl::Status InitCheckpoints();
  // Rank 0: the checkpoint folder config_.resume() names ("latest": the
  // newest complete one, reporting those skipped); empty for a fresh start.
  absl::StatusOr<std::string> ChooseResumeCheckpoint();
  // Restores the weights, optimizer state and step from `dir` after checking
  // that it continues this training.
  absl::Status RestoreCheckpoint(const std::string& dir);
  // After each step: saves when one is due or a stop signal arrived (which
  // all ranks agree on); returns whether to stop.
  absl::StatusOr<bool> CheckpointAfterStep();
  // DataPositionAfter(step_) for this run's data and batches.
  DataPosition CurrentDataPosition() const;
  // TR-DPO: whether the steps done have synced the live reference at least
  // once, so that a checkpoint must carry its weights.
  bool ReferenceSynced() const;
  // Restores the synced reference saved with a checkpoint of step `step`
  // (its role "reference" tensors; none before the first sync).
  absl::Status RestoreSyncedReference(
      absl::Span<const checkpoint::LoadedTensor* const> tensors, int64_t step);

  TrainConfig config_;
  std::ostream& log_;
  comm::Communicator* comm_;
  bool log_is_terminal_;
  int rank_ = 0;
  int world_ = 1;
  std::unique_ptr<kernels::Backend> backend_;
  // GPU ranks: the communicator for the backend's device buffers, over the
  // caller's (comm_ points to it from SelectDevice on). Declared after
  // backend_, so that it goes first, and before everything holding its
  // pending reductions.
  std::unique_ptr<comm::Communicator> gpu_comm_;
  io::ModelSpec spec_;
  data::Dataset dataset_;
  objectives::ReferenceValues references_;
  std::unique_ptr<model::Decoder> policy_;
  // model.lora.adapter_path, read before the policy exists (Init only).
  std::optional<std::pair<model::LoraOptions, lora::PeftAdapter>>
      start_adapter_;
  // model.lora's settings (or the starting adapter's), for export.
  lora::LoraSettings lora_settings_;
  // With model.lora.adapter_path: a frozen copy of the starting adapter
  // (backend memory, policy_'s trainable layout), the reference model's
  // adapters. Freed by ~Trainer.
  float* reference_adapters_ = nullptr;
  std::unique_ptr<objectives::ChunkedOutputLayer> output_;
  // Null for SparsePO, which runs through sparsepo_ instead.
  std::unique_ptr<objectives::Objective> objective_;
  // The objective's coefficients and metrics on the backend
  // (DeviceObjective::Create says when); null: on the host.
  std::unique_ptr<objectives::DeviceObjective> device_objective_;
  std::unique_ptr<GradientSync> sync_;
  std::unique_ptr<SparsePoStep> sparsepo_;
  // model.live_reference: scores each micro-batch instead of references_.
  std::unique_ptr<LiveReference> live_reference_;
  // objective.dpo.sync_ref_model (TR-DPO): live_reference_ is moved towards
  // the policy every ref_model_sync_steps steps.
  bool sync_reference_ = false;
  std::unique_ptr<optim::AdamWOptimizer> optimizer_;
  std::optional<metrics::MetricsLog> metrics_log_;
  // Rank 0 only, like metrics_log_; null/empty on the other ranks.
  std::optional<metrics::TensorBoardWriter> tensorboard_;
  std::unique_ptr<metrics::ProgressReporter> progress_;
  data::Batch batch_;
  std::vector<float> coef_;
  int global_batch_ = 0;
  int steps_per_epoch_ = 0;
  int total_steps_ = 0;
  int step_ = 0;
  // Tokens (prompt and response, all ranks) of the steps taken: TRL's
  // num_tokens metric, kept in checkpoints.
  int64_t num_tokens_ = 0;
  int epoch_order_for_ = -1;
  std::vector<int> epoch_order_;
  // Checkpoints: the fingerprints saved with them, the id this launch's
  // saves carry, the metrics.jsonl lines a resumed checkpoint counted, and
  // the signal that stopped the run.
  uint64_t data_fingerprint_ = 0;
  uint64_t tokenizer_fingerprint_ = 0;
  std::string writer_id_;
  int64_t resumed_metrics_lines_ = 0;
  int stop_signal_ = 0;
  // Held-out data: read in Init, scored by the reference in BuildReferences,
  // then owned by evaluator_ (null without data.eval_files).
  std::optional<data::Dataset> eval_data_;
  objectives::ReferenceValues eval_references_;
  std::unique_ptr<Evaluator> evaluator_;
  std::map<std::string, double> last_eval_;
  int last_eval_step_ = -1;
};

// The ModelSpec of a from-scratch model described by the config's sizes.
io::ModelSpec SpecFromConfig(const ModelConfig& model);

// model.lora's fields as PEFT's settings (fresh adapters, docs/lora.md).
lora::LoraSettings SettingsFromConfig(const LoraConfig& config);

// The adapters `settings` put on a model of `spec`: PEFT's target_modules
// rules and scaling; InvalidArgument naming model.lora.target_modules (and
// listing the model's layers) for a target the model does not have. Expects
// validated settings (r > 0).
absl::StatusOr<model::LoraOptions> LoraOptionsFor(
    const lora::LoraSettings& settings, const io::ModelSpec& spec);

// model.lora.adapter_path: the PEFT adapter folder read for a model of
// `spec` and the options it sets (its r, lora_alpha, target_modules and
// use_rslora; the config's dropout). InvalidArgument naming the model.lora
// field that the config sets to something else than the adapter.
absl::StatusOr<std::pair<model::LoraOptions, lora::PeftAdapter>>
ReadStartingAdapter(const LoraConfig& config, const io::ModelSpec& spec);

// A LoRA policy's adapters as a PEFT adapter with `settings`, factors copied
// from the backend, for export.
lora::PeftAdapter AdapterFromDecoder(const model::Decoder& policy,
                                     const lora::LoraSettings& settings,
                                     const std::string& base_model);

// The seed of the LoRA dropout masks of one micro-batch: a function of the
// run's seed, the step, the micro-batch's index in the step and the rank,
// so that a resumed run draws the same masks.
uint64_t LoraDropoutSeed(uint64_t seed, int step, int micro_batch, int rank);

// The objective selected by the config.
absl::StatusOr<std::unique_ptr<objectives::Objective>> CreateObjective(
    const ObjectiveConfig& config, int vocab_size);

// The run length within which unpaired data pairs its KL completions
// (data::AttachKlCompletions) for `objective` (may be null): the global batch
// (batch.global_batch_size, else micro_batch_size × `world_size`) when the
// objective has a pre-pass, so that each global batch's KL completions are
// its own completions (docs/objectives.md §9); else 0, none.
int KlChunk(const TrainConfig& config, const objectives::Objective* objective,
            int world_size);

// The objective's pre-pass (Objective::has_prepass; nothing without one):
// response 1 of every example of `indices`, `micro_batch` examples at a
// time, scored by `policy` without a gradient, with `reference(micro)`
// giving each micro-batch's reference values, into `prepass`, which is then
// summed over the ranks of `comm` (none when null). With `device`, the sums
// are taken on the backend (DeviceObjective::Prepass) and come down once.
absl::Status ScorePrepass(
    const objectives::Objective& objective,
    const std::vector<data::Example>& examples, const std::vector<int>& indices,
    int micro_batch, model::Decoder* policy,
    objectives::ChunkedOutputLayer* output,
    const std::function<const objectives::ReferenceValues*(
        const std::vector<int>& micro)>& reference,
    comm::Communicator* comm, data::Batch* batch,
    objectives::DeviceObjective* device, objectives::MetricSums* prepass);

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_TRAINER_H_
