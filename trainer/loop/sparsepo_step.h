// SparsePO's micro-batch step (docs/objectives.md §2). SparsePO does not fit
// the coefficient-form Objective interface: its logit gradient has a second
// term that needs the reference's full-vocabulary logits, its masks come from
// the reference's activations, and the learned mask is a second set of trained
// parameters. This class holds what it needs beside the policy:
//   - the live reference, observed during its Forward for the mask inputs:
//     a frozen decoder kept in memory for the whole run (no gradients, no
//     optimizer state), or with LoRA the policy itself in reference mode
//     (its adapters off, or its frozen starting adapter: docs/lora.md), so
//     the weights are held once;
//   - the mask: one or two SparsePoMaskNet (LEARNED: over the reference's
//     hidden state after each layer, the last after the final norm, on the
//     response rows) with their own AdamW, or MaPO's fixed masks (MAPO: from
//     the reference's activations and logits);
//   - the fused two-model output layer (Backend::SparsePoOutputForward/
//     Backward, on the policy's backend), which keeps the output layer's
//     memory at two [chunk, V] buffers.
//
// One micro-batch: reference forward (capturing) → policy forward → fused
// pass 1 (ℓ, ℓ̃, K per response token) → masks → SparsePoObjective::Pair per
// pair → fused pass 2 into the policy's ∂hidden and output-embedding
// gradient (none with LoRA: the output embedding is frozen) → policy
// backward → mask networks' backward. The reference goes first because with
// LoRA it is the same decoder, whose Backward needs the policy's activations.
// The loop sums the mask gradients across ranks, clips them together with the
// policy's, and calls Update after the policy's AdamW step.
//
// Everything runs on the policy's backend: the response rows are gathered
// there, the masks (Backend::SparsePoMaskForward/Backward, MapoMask), the
// pair math (Backend::SparsePoCoefficients) and the mask networks' AdamW too.
// Per micro-batch the labels and the pairs' spans go up; the metric sums stay
// on the backend until TakeMetrics brings them down, once per step.
#ifndef PREFOPT_TRAINER_LOOP_SPARSEPO_STEP_H_
#define PREFOPT_TRAINER_LOOP_SPARSEPO_STEP_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "proto/config.pb.h"
#include "trainer/data/batch.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/mapo_masks.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/objectives/sparsepo.h"
#include "trainer/objectives/sparsepo_mask_net.h"
#include "trainer/optim/optimizer.h"

namespace prefopt::loop {

// The MaPO group of a decoder activation (docs/objectives.md §2): for GPT-2
// the official code's hooks, for Llama/Qwen2 the analogous points of its
// rotary models; nullopt for an activation no group holds.
std::optional<objectives::MapoGroup> MapoGroupOf(model::Activation kind,
                                                 io::ModelSpec::Arch arch);

class SparsePoStep {
 public:
  // `config` is the validated run config (objective.sparsepo set; its
  // optimizer and output_chunk_tokens apply, and its seed draws the mask
  // networks' initial weights). `policy` is not owned and outlives this
  // object; `reference` is the frozen reference (CreateReferenceModel), or
  // null for a LoRA policy, which is then its own reference in reference
  // mode (Decoder::set_reference_mode).
  static absl::StatusOr<std::unique_ptr<SparsePoStep>> Create(
      const TrainConfig& config, model::Decoder* policy,
      std::unique_ptr<model::Decoder> reference);
  // Floats the step keeps for the masks' inputs, gathered from a reference
  // of `layers` blocks of width `hidden` over up to `max_rows` rows: every
  // layer's hidden rows (learned masks) or one score per row and MaPO map.
  static size_t MaskInputFloats(bool learned, int layers, int hidden,
                                int max_rows);
  ~SparsePoStep();
  SparsePoStep(const SparsePoStep&) = delete;
  SparsePoStep& operator=(const SparsePoStep&) = delete;

  // Forward and backward over one packed micro-batch of pairs (data::
  // BuildBatch order: each example's chosen, then rejected sequence) of a
  // global batch of `global_pairs` pairs. Accumulates into the policy's
  // gradients (the caller zeroes them once per step) and the mask networks'
  // gradients, and adds the loss and §2's metrics to the backend's sums.
  void ForwardBackward(const data::Batch& batch, double global_pairs);
  // Adds the metrics of the micro-batches since the last call to `sums`
  // (one copy from the backend) and starts over; nothing when none ran.
  void TakeMetrics(objectives::MetricSums* sums);

  // The mask networks' gradient buffers (none with MaPO masks), for the
  // all-reduce across ranks and the global clipping norm.
  std::vector<optim::GradientSpan> Gradients();
  // The backend those gradients (and the mask networks' parameters and
  // moments) live on: the policy's.
  kernels::Backend* mask_backend() { return policy_->backend(); }
  // Discards the mask networks' gradients (a skipped, non-finite step).
  void ZeroGradients();
  // For resuming: the updates the mask optimizers have already applied.
  void SetOptimizerSteps(int steps);
  // One AdamW step of the mask networks at the policy's learning rate `lr`,
  // then zeroes their gradients.
  void Update(float lr);

  // The trained state outside the policy, for checkpoints (never for the
  // Hugging Face export): each mask network's tensors under their layout
  // names ("sparsepo_mask.w.0", ...), and its AdamW moments as
  // "<name>.exp_avg" and "<name>.exp_avg_sq". Host copies, valid until the
  // next call. Empty with MaPO masks. The mask optimizers step
  // once per policy step, so their step count is the policy optimizer's.
  std::vector<io::TensorToWrite> CheckpointTensors();
  // Restores tensors of CheckpointTensors' names and shapes. Fails, changing
  // nothing, when one is missing, unknown or of another shape.
  absl::Status RestoreCheckpointTensors(
      absl::Span<const io::TensorToWrite> tensors);

  // The reference decoder: the frozen copy, or the policy itself (LoRA).
  const model::Decoder& reference() const { return *reference_; }
  // LEARNED: the common mask network, or with independent masks the reward
  // and the KL ones (those whose term is masked). Empty with MaPO masks.
  const std::vector<std::unique_ptr<objectives::SparsePoMaskNet>>& mask_nets()
      const {
    return nets_;
  }

 private:
  class MaskInputs;
  // One buffer of the mask state: a mask network's tensor or one of its
  // AdamW moments.
  struct StateBuffer {
    std::string name;
    const model::ParamTensor* tensor;
    float* data;
  };

  // The per-row arrays of a micro-batch in row_values_, `rows` apart: the
  // fused output layer's values, the masks, the coefficients A and B, and
  // the mask gradients.
  enum RowValue {
    kLogp,
    kRefLogp,
    kKl,
    kLogitSum,
    kRefLogitSum,
    kEntropy,
    kLse,
    kRefLse,
    kMaskReward,
    kMaskKl,
    kCoefA,
    kCoefB,
    kDmaskReward,
    kDmaskKl,
  };
  static constexpr int kRowValues = kDmaskKl + 1;
  // Array `v` of a micro-batch of `rows` response rows.
  float* row_value(RowValue v, int rows) const {
    return row_values_ + static_cast<size_t>(v) * rows;
  }

  SparsePoStep(const TrainConfig& config, model::Decoder* policy,
               std::unique_ptr<model::Decoder> reference,
               objectives::SparsePoObjective objective);
  // Writes the masks of the last forward's `rows` response rows (spans_)
  // into kMaskReward (and kMaskKl with independent masks).
  void ComputeMasks(int rows);
  // Every buffer CheckpointTensors names, in that order.
  std::vector<StateBuffer> StateBuffers();

  model::Decoder* policy_;
  // Null when the policy is its own reference (LoRA).
  std::unique_ptr<model::Decoder> own_reference_;
  model::Decoder* reference_;
  objectives::SparsePoObjective objective_;
  int chunk_;
  bool learned_;
  std::vector<objectives::MapoGroup> mapo_groups_;
  // LEARNED: the common mask network, or with independent masks one network
  // per masked term (reward, then KL); each with its own AdamW.
  std::vector<std::unique_ptr<objectives::SparsePoMaskNet>> nets_;
  // Per network: whether it is the independent KL mask (writes kMaskKl),
  // rather than the common or reward mask (kMaskReward).
  std::vector<bool> net_is_kl_;
  std::vector<std::unique_ptr<optim::AdamWOptimizer>> optimizers_;
  std::unique_ptr<MaskInputs> inputs_;

  // Backend memory, sized for the capacity once: the response rows of one
  // micro-batch, segment after segment, of both models' final hidden states
  // and of the policy's ∂hidden; the two chunk buffers; the per-row arrays
  // (RowValue); the metric sums (kSparsePoMetricCount doubles).
  float* rows_h_ = nullptr;
  float* rows_ref_h_ = nullptr;
  float* rows_dh_ = nullptr;
  float* chunk_buf_ = nullptr;
  float* ref_chunk_buf_ = nullptr;
  float* row_values_ = nullptr;
  float* metrics_ = nullptr;
  std::vector<int32_t> labels_;
  // The micro-batch's responses over the gathered rows.
  std::vector<kernels::SeqSpan> spans_;
  // The metric sums' counts since the last TakeMetrics, and their host copy.
  double pairs_ = 0, chosen_tokens_ = 0, rejected_tokens_ = 0;
  std::vector<double> metrics_h_;
  std::vector<float> checkpoint_host_;
};

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_SPARSEPO_STEP_H_
