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

// One Hugging Face tensor held in rows [row_begin, row_begin + rows) (dim 0)
// of a fused ParamTensor.
struct HfPart {
  // The Hugging Face name, e.g. "model.layers.0.mlp.up_proj.weight".
  std::string name;
  int64_t row_begin = 0;
  int64_t rows = 0;
};

struct ParamTensor {
  // The tensor's name, the key of checkpoints: the Hugging Face parameter name
  // (e.g. "transformer.h.0.attn.c_attn.weight") when hf_parts is empty, else
  // prefopt's name for the fused tensor (e.g.
  // "model.layers.0.self_attn.qkv_proj.weight").
  std::string name;
  // Shape in our layout: linear weights are [out, in].
  std::vector<int64_t> shape;
  // True when Hugging Face stores the weight as [in, out] (GPT-2's Conv1D), so
  // load and export transpose it.
  bool hf_transposed = false;
  // Empty: this tensor is the Hugging Face tensor `name`. Otherwise it stacks
  // these Hugging Face tensors along dim 0, listed in row order and covering
  // every row (Llama's q_proj, k_proj, v_proj as one fused projection); each
  // has this tensor's shape with dim 0 replaced by its `rows`. Fused tensors
  // are never hf_transposed.
  std::vector<HfPart> hf_parts;
  size_t offset = 0;  // in floats, inside the parameter buffer
  size_t numel = 0;
  // Biases and normalization weights are not decayed by default (as in the
  // Hugging Face Trainer).
  bool is_norm_or_bias = false;
  Init init = Init::kNormal;
  // kNormal draws N(0, (init_std * init_scale)^2): GPT-2 scales its residual
  // projections by 1/sqrt(2 * n_layer).
  float init_scale = 1.0f;

  // The Hugging Face shape of an unfused tensor.
  std::vector<int64_t> HfShape() const;
};

// Where one Hugging Face tensor lives in the parameter buffer (or in a
// gradient or optimizer buffer of the same layout): always one contiguous
// range [offset, offset + numel).
struct HfTensorRef {
  std::string name;            // the Hugging Face name
  std::vector<int64_t> shape;  // the Hugging Face shape
  size_t offset = 0;           // in floats, inside the buffer
  size_t numel = 0;
  // The range holds the transpose of `shape` (GPT-2's Conv1D weights).
  bool transposed = false;
  const ParamTensor* param = nullptr;  // the tensor that holds it
};

class ParamLayout {
 public:
  // Appends a tensor and returns its offset.
  size_t Add(ParamTensor tensor);
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t total() const { return total_; }
  const ParamTensor* Find(const std::string& name) const;
  // Every Hugging Face tensor of the model, in layout order (a fused tensor's
  // parts in row order): what loading, export and comparisons against
  // Hugging Face gradients walk. Tied tensors appear once.
  std::vector<HfTensorRef> HfTensors() const;

 private:
  std::vector<ParamTensor> tensors_;
  size_t total_ = 0;
};

// Converts ref.numel floats from the Hugging Face layout (`hf`) into the
// buffer's layout (`buffer` points at the buffer's element ref.offset), and
// back: a copy, or a transpose when ref.transposed.
void HfToLayout(const HfTensorRef& ref, const float* hf, float* buffer);
void LayoutToHf(const HfTensorRef& ref, const float* buffer, float* hf);

}  // namespace prefopt::model

#endif  // PREFOPT_TRAINER_MODEL_PARAM_LAYOUT_H_
