// The frozen reference model (docs/objectives.md §6), and its live use by the
// coefficient-form objectives: instead of the precomputed cache, a frozen
// copy in memory scores every micro-batch (model.live_reference; SparsePO
// always runs its reference live, see sparsepo_step.h). TR-DPO moves the live
// reference towards the policy during training (LiveReference::MixIn).
#ifndef PREFOPT_TRAINER_LOOP_REFERENCE_MODEL_H_
#define PREFOPT_TRAINER_LOOP_REFERENCE_MODEL_H_

#include <memory>
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
#include "trainer/reference/reference_logps.h"

namespace prefopt::loop {

// A frozen decoder (no gradients, no optimizer state) sized for the policy's
// capacity on the policy's backend: the model at config.reference_hf_path,
// whose vocabulary must be the policy's, or else a copy of the policy's
// current weights (the initial policy, when called before training).
absl::StatusOr<std::unique_ptr<model::Decoder>> CreateReferenceModel(
    const ModelConfig& config, const model::Decoder& policy);

// How the precomputed reference pass runs for `objective` under `config`:
// per-token values when the objective needs them, the context left out when
// its reference must not see it, split over the ranks of `comm` (may be null).
reference::ReferenceOptions ReferenceOptionsFor(
    const objectives::Objective& objective, const TrainConfig& config,
    comm::Communicator* comm);

// OK when `reference` holds its parameters in `policy`'s layout (the same
// tensors, shapes and offsets), as TR-DPO's mixing needs; otherwise an error
// naming the first difference.
absl::Status CheckSameParamLayout(const model::Decoder& policy,
                                  const model::Decoder& reference);

class LiveReference;

// TR-DPO (objective.dpo.sync_ref_model, docs/objectives.md §1): OK when
// `reference` (null when the reference log-probs are precomputed) can be
// mixed with `policy` every ref_model_sync_steps steps with
// ref_model_mixup_alpha; otherwise an error naming the field. Configs read by
// LoadTrainConfig are valid already; one built in code may not be.
absl::Status CheckReferenceSync(const DpoConfig& dpo,
                                const LiveReference* reference,
                                const model::Decoder& policy);

class LiveReference {
 public:
  // `chunk` is the output layer's chunk (output_chunk_tokens);
  // `num_examples` the size of the dataset whose indices Score receives.
  LiveReference(std::unique_ptr<model::Decoder> model, int chunk,
                size_t num_examples);
  // LoRA (docs/lora.md): the reference is `policy` itself in reference mode
  // for each Score (its starting adapter, or its adapters off), so the
  // weights are held once. Not owned;
  // Score must run before the policy's own Forward of a micro-batch (it
  // overwrites the policy's activations).
  LiveReference(model::Decoder* policy, int chunk, size_t num_examples);

  // Scores the examples `micro` (dataset indices, at most the capacity's
  // worth) with the frozen model, with or without their context; with
  // only_response >= 0 only that response of each (the others read NaN and no
  // tokens). The result is laid out as the precomputed values (per-response
  // L̃ and per-token ℓ̃) but holds only these examples; valid until the next
  // call.
  const objectives::ReferenceValues& Score(
      const std::vector<data::Example>& examples, const std::vector<int>& micro,
      bool include_context, int only_response = -1);

  // TR-DPO's update (docs/objectives.md §1): every parameter of the reference
  // becomes alpha * policy + (1 - alpha) * reference, on the backend, over
  // the whole parameter buffer. `policy` must have the reference's layout
  // (CheckSameParamLayout).
  void MixIn(const model::Decoder& policy, float alpha);

  // The frozen model, for checkpoints of a reference that TR-DPO has moved.
  model::Decoder& model() { return *model_; }
  const model::Decoder& model() const { return *model_; }

 private:
  std::unique_ptr<model::Decoder> owned_;
  model::Decoder* model_;
  objectives::ChunkedOutputLayer output_;
  data::Batch batch_;
  objectives::ReferenceValues values_;
};

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_REFERENCE_MODEL_H_
