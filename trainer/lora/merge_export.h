// `prefopt export --merge_lora`: a base model with a PEFT adapter folded in,
// as a Hugging Face folder.
#ifndef PREFOPT_TRAINER_LORA_MERGE_EXPORT_H_
#define PREFOPT_TRAINER_LORA_MERGE_EXPORT_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/io/safetensors.h"

namespace prefopt::lora {

struct MergedExport {
  int modules = 0;  // adapted linear layers merged
  float scaling = 0.0f;
  // adapter_config.json's base_model_name_or_path, for the user to compare.
  std::string adapter_base_model;
};

// Loads the Hugging Face model `base_dir` (validated as training loads it),
// reads the PEFT adapter `adapter_dir` for it (ReadPeftAdapter), adds
// s * B A to every adapted weight (MergeAdapter) and writes the result to
// `out_dir` with checkpoint::ExportHfModel: weights in `dtype` sharded at
// `max_shard_bytes`, config.json, and base_dir's generation_config.json and
// tokenizer files. `out_dir` must not exist or be empty.
absl::StatusOr<MergedExport> ExportMergedModel(const std::string& base_dir,
                                               const std::string& adapter_dir,
                                               const std::string& out_dir,
                                               io::DType dtype,
                                               size_t max_shard_bytes);

}  // namespace prefopt::lora

#endif  // PREFOPT_TRAINER_LORA_MERGE_EXPORT_H_
