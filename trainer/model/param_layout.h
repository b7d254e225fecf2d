// The parameters of a decoder as named tensors inside one contiguous fp32
// buffer. One buffer (rather than one allocation per tensor) makes gradient
// all-reduce, global-norm clipping, AdamW and checkpointing single loops over
// memory.
#ifndef PREFOPT_TRAINER_MODEL_PARAM_LAYOUT_H_
#define PREFOPT_TRAINER_MODEL_PARAM_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace prefopt::model {

// Initial values for a tensor in a from-scratch run.
enum class Init {
  kNormal,  // N(0, std)
  kZeros,
  kOnes,
};

struct ParamTensor {
  // The Hugging Face parameter name (e.g.
  // "transformer.h.0.attn.c_attn.weight"), used for loading, export and
  // checkpoints.
  std::string name;
  // Shape in our layout: linear weights are [out, in].
  std::vector<int64_t> shape;
  // True when Hugging Face stores the weight as [in, out] (GPT-2's Conv1D), so
  // load and export transpose it.
  bool hf_transposed = false;
  size_t offset = 0;  // in floats, inside the parameter buffer
  size_t numel = 0;
  // Biases and normalization weights are not decayed by default (as in the
  // Hugging Face Trainer).
  bool is_norm_or_bias = false;
  Init init = Init::kNormal;
  // kNormal draws N(0, (init_std * init_scale)^2): GPT-2 scales its residual
  // projections by 1/sqrt(2 * n_layer).
  float init_scale = 1.0f;

  std::vector<int64_t> HfShape() const;
};

class ParamLayout {
 public:
  // Appends a tensor and returns its offset.
  size_t Add(ParamTensor tensor);
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t total() const { return total_; }
  const ParamTensor* Find(const std::string& name) const;

 private:
  std::vector<ParamTensor> tensors_;
  size_t total_ = 0;
};

}  // namespace prefopt::model

#endif  // PREFOPT_TRAINER_MODEL_PARAM_LAYOUT_H_
