// A LoRA adapter in PEFT's on-disk format: adapter_config.json and
// adapter_model.safetensors, as PeftModel.save_pretrained writes them and
// PeftModel.from_pretrained reads them (docs/lora.md).
#ifndef PREFOPT_TRAINER_LORA_PEFT_ADAPTER_H_
#define PREFOPT_TRAINER_LORA_PEFT_ADAPTER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/io/hf_config.h"
#include "trainer/lora/lora_modules.h"

namespace prefopt::lora {

// PEFT's LoraConfig fields prefopt uses.
struct LoraSettings {
  int r = 8;
  float alpha = 8.0f;  // lora_alpha
  float dropout = 0.0f;
  bool use_rslora = false;
  // As configured (may be empty: PEFT's default for the architecture).
  std::vector<std::string> target_modules;

  // The factor on B A: alpha / r, or alpha / sqrt(r) with use_rslora.
  float Scaling() const;
};

// One adapted linear layer's factors, row-major in PEFT's layout.
struct AdapterFactors {
  LinearModule module;
  std::vector<float> a;  // lora_A.weight [r, in_features]
  std::vector<float> b;  // lora_B.weight [out_features, r]
};

struct PeftAdapter {
  LoraSettings settings;
  // adapter_config.json's base_model_name_or_path (informational).
  std::string base_model_name_or_path;
  // In ResolveTargetModules order.
  std::vector<AdapterFactors> factors;
};

// Reads a PEFT adapter folder for a model of `spec`. Errors name the file and
// the field or tensor: a missing file, a config that is not LoRA (peft_type),
// settings prefopt does not implement (bias other than "none", DoRA, a
// rank_pattern/alpha_pattern, modules_to_save, lora on the embeddings), a
// tensor for a module the model does not have or with the wrong shape, a
// module the config targets without its tensors, NaN/Inf values.
absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& dir,
                                            const io::ModelSpec& spec);

// Writes `adapter` into `dir` (created; must not exist or be empty) as PEFT
// does: adapter_config.json with PEFT's keys (peft_type "LORA", task_type
// "CAUSAL_LM", r, lora_alpha, lora_dropout, target_modules, use_rslora,
// fan_in_fan_out true for GPT-2, bias "none", ...) and
// adapter_model.safetensors with keys
// "base_model.model.<module path>.lora_{A,B}.weight" in fp32. Each file is
// written atomically.
absl::Status WritePeftAdapter(const std::string& dir, const io::ModelSpec& spec,
                              const PeftAdapter& adapter);

}  // namespace prefopt::lora

#endif  // PREFOPT_TRAINER_LORA_PEFT_ADAPTER_H_
