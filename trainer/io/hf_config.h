#ifndef PREFOPT_TRAINER_IO_HF_CONFIG_H_
#define PREFOPT_TRAINER_IO_HF_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prefopt::io {

// Rotary-embedding frequency scaling (a config's "rope_scaling").
struct RopeScaling {
  enum class Type {
    kNone,    // null, absent, or rope_type "default"
    kLinear,  // positions divided by `factor`
    kLlama3,  // Llama 3.1 wavelength-dependent scaling
  };
  Type type = Type::kNone;
  double factor = 1.0;                           // kLinear and kLlama3
  double low_freq_factor = 1.0;                  // kLlama3
  double high_freq_factor = 4.0;                 // kLlama3
  int64_t original_max_position_embeddings = 0;  // kLlama3
};

// The shape and numerics of a decoder-only transformer, as read from a Hugging
// Face config.json.
struct ModelSpec {
  enum class Arch {
    kGpt2,   // GPT2LMHeadModel
    kLlama,  // LlamaForCausalLM and MistralForCausalLM
    kQwen2,  // Qwen2ForCausalLM
  };
  Arch arch = Arch::kGpt2;
  // The Hugging Face class and model_type, e.g. "MistralForCausalLM" and
  // "mistral"; empty means the default for `arch` when writing.
  std::string hf_architecture;
  std::string hf_model_type;

  int64_t vocab_size = 0;
  int64_t max_positions = 0;  // n_positions / max_position_embeddings
  int64_t hidden = 0;         // d: n_embd / hidden_size
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_kv_head = 0;     // key/value heads (grouped-query attention)
  int64_t head_dim = 0;      // per-head width of queries, keys and values
  int64_t intermediate = 0;  // MLP width
  double norm_eps = 1e-5;    // LayerNorm (GPT-2) or RMSNorm epsilon
  bool tie_word_embeddings = true;
  // GPT-2: "gelu_new" or "gelu_pytorch_tanh" (both tanh-approximated GELU);
  // Llama/Qwen2: "silu" (SwiGLU MLP).
  std::string activation;

  // Rotary embeddings (Llama/Qwen2 only).
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;

  // Biases: on the query/key/value projections, on the attention output
  // projection, and on the MLP projections. GPT-2 has all three; Qwen2 only
  // the first; Llama per its attention_bias/mlp_bias; Mistral none.
  bool attention_bias = false;
  bool attention_out_bias = false;
  bool mlp_bias = false;

  std::optional<int64_t> bos_token_id;
  // The end-of-sequence id; when the config lists several, the first, with
  // the others in extra_eos_token_ids.
  std::optional<int64_t> eos_token_id;
  std::vector<int64_t> extra_eos_token_ids;

  // The config's "dtype" (or legacy "torch_dtype"): "float32", "bfloat16",
  // "float16"; empty when unspecified.
  std::string torch_dtype;
  // The config.json this spec was read from (ReadHfConfig); empty for a
  // spec built in code. Errors about the model's sizes name it.
  std::string config_path;
};

// Reads and validates `model_dir`/config.json. Supports GPT2LMHeadModel,
// LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM (chosen by
// "architectures", else by "model_type"). The size fields are required; other
// fields that are absent or null take the defaults of the matching transformers
// config class, except that num_key_value_heads defaults to
// num_attention_heads and head_dim to hidden_size / num_attention_heads.
// Errors name the file and the field:
// a missing file, an unknown architecture (listing the supported ones), a
// field of the wrong type, inconsistent sizes, and features prefopt does not
// implement (other activations, GPT-2's inverse-layer-index attention scaling
// or reordered upcast attention, sliding-window attention, rope scaling other
// than linear and llama3), sizes above 2^31 - 1 (alone or as the widths the
// model computes from them), a non-positive or non-finite norm epsilon, a
// rope_theta not above 1, and bos/eos ids outside [0, vocab_size), here or in
// `model_dir`/generation_config.json when present (a default id outside the
// vocabulary is dropped instead).
absl::StatusOr<ModelSpec> ReadHfConfig(const std::string& model_dir);

// Writes `model_dir`/config.json describing `spec` so that transformers'
// AutoConfig and AutoModelForCausalLM load the same architecture. Fails if
// `spec` is inconsistent or cannot be expressed in that architecture's
// config (for example Qwen2 without query/key/value biases).
absl::Status WriteHfConfig(const ModelSpec& spec, const std::string& model_dir);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_HF_CONFIG_H_
