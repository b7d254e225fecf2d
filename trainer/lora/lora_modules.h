// The linear layers of a decoder that LoRA can adapt, named as Hugging Face
// names their modules, and PEFT's rules for choosing them from a
// target_modules list (docs/lora.md).
#ifndef PREFOPT_TRAINER_LORA_LORA_MODULES_H_
#define PREFOPT_TRAINER_LORA_LORA_MODULES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/io/hf_config.h"

namespace prefopt::lora {

// Which projection of a transformer block a linear layer is.
enum class Projection {
  kAttentionQkv,  // GPT-2's fused c_attn
  kQuery,         // q_proj
  kKey,           // k_proj
  kValue,         // v_proj
  kAttentionOut,  // o_proj, GPT-2's attn.c_proj
  kGate,          // gate_proj
  kUp,            // up_proj
  kMlpIn,         // GPT-2's c_fc
  kMlpOut,        // down_proj, GPT-2's mlp.c_proj
};

struct LinearModule {
  // The Hugging Face module path, e.g. "transformer.h.0.attn.c_attn" or
  // "model.layers.3.self_attn.q_proj" (PEFT's key prefix without
  // "base_model.model.").
  std::string path;
  // The path inside its block, e.g. "attn.c_attn", "self_attn.q_proj".
  std::string name;
  int layer = 0;
  Projection projection = Projection::kQuery;
  int64_t in_features = 0;
  int64_t out_features = 0;
  // GPT-2's Conv1D stores its weight as [in, out] (PEFT's fan_in_fan_out).
  bool fan_in_fan_out = false;
};

// Every linear layer of the transformer blocks of `spec`, layer by layer in
// the block's order (the output embedding is never one: PEFT's all-linear
// leaves it out too).
std::vector<LinearModule> LinearModules(const io::ModelSpec& spec);

// PEFT's default target_modules for the architecture: GPT-2 {"c_attn"},
// Llama, Mistral and Qwen2 {"q_proj", "v_proj"}.
std::vector<std::string> DefaultTargetModules(const io::ModelSpec& spec);

// The modules `targets` selects, in LinearModules order: a module is chosen
// when its path equals an entry or ends with "." + the entry; the single
// entry "all-linear" chooses every module; empty means
// DefaultTargetModules. InvalidArgument naming `field` (e.g.
// "model.lora.target_modules") and listing the model's module names when an
// entry matches no module, or when "all-linear" is mixed with other names.
absl::StatusOr<std::vector<LinearModule>> ResolveTargetModules(
    const io::ModelSpec& spec, const std::vector<std::string>& targets,
    const std::string& field);

}  // namespace prefopt::lora

#endif  // PREFOPT_TRAINER_LORA_LORA_MODULES_H_
