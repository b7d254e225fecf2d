// A decoder-only language model (GPT-2 family; Llama and Qwen2 share the
// structure) with explicit forward and backward passes over a packed batch,
// written once against kernels::Backend.
//
// The model stops at the final normalization: Forward returns the final hidden
// states, and the output layer (hidden → vocabulary) is applied by the chunked
// output layer of the objective runner, which never materializes all logits
// (objectives.md §7). The output embedding is exposed for that purpose.
#ifndef PREFOPT_TRAINER_MODEL_DECODER_H_
#define PREFOPT_TRAINER_MODEL_DECODER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/model/param_layout.h"

namespace prefopt::model {

// Sequences packed back to back without padding. Host memory.
struct PackedBatch {
  std::vector<int32_t> tokens;     // [N]
  std::vector<int32_t> positions;  // [N], restarting at 0 for each sequence
  std::vector<kernels::SeqSpan> spans;

  int rows() const { return static_cast<int>(tokens.size()); }
  void Clear();
  // Appends the sequence first ++ second.
  void AddSequence(absl::Span<const int32_t> first,
                   absl::Span<const int32_t> second = {});
};

// Upper bounds that size the activation memory, allocated once up front so that
// the steady-state step allocates nothing.
struct Capacity {
  int max_rows = 0;     // tokens in one packed batch
  int max_seq_len = 0;  // longest sequence
  int max_seqs = 0;     // sequences in one packed batch
};

class Decoder {
 public:
  // Lays out the parameters of `spec` and allocates them (and, when trainable,
  // their gradients and the backward buffers) on `backend`. Parameters start
  // zeroed: call LoadHf or InitRandom.
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(
      const io::ModelSpec& spec, kernels::Backend* backend,
      const Capacity& capacity, bool trainable);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Loads every parameter from a Hugging Face weight store; a missing tensor or
  // a shape mismatch is an error naming the tensor and the file.
  absl::Status LoadHf(const io::WeightStore& store);
  // From-scratch initialization as transformers does for the architecture.
  void InitRandom(uint64_t seed, float init_std);

  // Runs the model over `batch` and returns the final hidden states [N, C]
  // (backend memory, valid until the next Forward).
  const float* Forward(const PackedBatch& batch);
  // Backpropagates dhidden() (the gradient w.r.t. Forward's output, filled by
  // the caller) through the model for the batch of the last Forward,
  // accumulating into grads(). Trainable models only.
  void Backward(const PackedBatch& batch);
  // [max_rows, C] buffer for the gradient w.r.t. the final hidden states.
  float* dhidden() { return dhidden_; }

  const io::ModelSpec& spec() const { return spec_; }
  const ParamLayout& layout() const { return layout_; }
  kernels::Backend* backend() const { return backend_; }
  float* params() { return params_; }
  const float* params() const { return params_; }
  float* grads() { return grads_; }
  const float* grads() const { return grads_; }
  // The [V, C] output embedding (tied to the input embedding when the spec
  // says so) and its gradient.
  const float* output_embedding() const { return params_ + wout_offset_; }
  float* output_embedding_grad() { return grads_ + wout_offset_; }
  int hidden_size() const { return spec_.hidden; }
  int vocab_size() const { return spec_.vocab_size; }
  const Capacity& capacity() const { return capacity_; }

 private:
  struct LayerOffsets;
  struct LayerActs;

  Decoder(const io::ModelSpec& spec, kernels::Backend* backend,
          const Capacity& capacity, bool trainable);
  void BuildLayout();
  void AllocateActivations();
  float* P(size_t offset) { return params_ + offset; }
  float* G(size_t offset) { return grads_ + offset; }

  io::ModelSpec spec_;
  kernels::Backend* backend_;
  Capacity capacity_;
  bool trainable_;
  ParamLayout layout_;
  size_t wte_offset_ = 0, wpe_offset_ = 0, wout_offset_ = 0;
  size_t lnf_w_ = 0, lnf_b_ = 0;
  std::vector<LayerOffsets> layer_offsets_;
  std::vector<LayerActs> acts_;

  float* params_ = nullptr;
  float* grads_ = nullptr;
  std::vector<float*> owned_;  // every backend allocation, freed at destruction

  // Forward activations shared across layers.
  float* encoded_ = nullptr;  // embedding output = residual stream into layer 0
  float* lnf_ = nullptr;      // final hidden states
  float* lnf_mean_ = nullptr;
  float* lnf_rstd_ = nullptr;
  float* branch_out_ = nullptr;  // a block's attention or MLP output
  // Backward scratch.
  float* dhidden_ = nullptr;
  float* dresidual_ = nullptr;
  float* dscratch_c_ = nullptr;    // [rows, C]
  float* dscratch_qkv_ = nullptr;  // [rows, qkv width]
  float* dscratch_c2_ = nullptr;   // [rows, C]
  float* dscratch_ff_ = nullptr;   // [rows, intermediate]
  float* dscratch_ff2_ = nullptr;  // [rows, intermediate]
};

}  // namespace prefopt::model

#endif  // PREFOPT_TRAINER_MODEL_DECODER_H_
