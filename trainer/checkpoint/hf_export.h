// Writing a model as a Hugging Face folder that
// transformers.AutoModelForCausalLM.from_pretrained loads: config.json,
// generation_config.json, the weights in Hugging Face names and layout (one
// model.safetensors or shards plus model.safetensors.index.json) and the
// tokenizer files.
#ifndef PREFOPT_TRAINER_CHECKPOINT_HF_EXPORT_H_
#define PREFOPT_TRAINER_CHECKPOINT_HF_EXPORT_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/param_layout.h"

namespace prefopt::checkpoint {

// The tokenizer files of a Hugging Face folder that exports and checkpoints
// copy when present.
const std::vector<std::string>& TokenizerFileNames();

// The Hugging Face tensors of `layout` (ParamLayout::HfTensors: fused tensors
// split into their parts, tied tensors once) with their values from `params`
// (host memory, layout.total() floats) in Hugging Face layout: tensors that
// Hugging Face stores transposed (GPT-2's Conv1D weights) are transposed into
// `*storage`, the others point into `params`. The result is valid while both
// live.
std::vector<io::TensorToWrite> HfTensors(
    const model::ParamLayout& layout, const float* params,
    std::vector<std::vector<float>>* storage);

// Copies the files of TokenizerFileNames() present in `from_dir` into
// `to_dir`, each replaced atomically, and returns the names copied (none for
// a model trained on pre-tokenized data, which has no tokenizer).
absl::StatusOr<std::vector<std::string>> CopyTokenizerFiles(
    const std::string& from_dir, const std::string& to_dir);

// Writes `dir`/generation_config.json: a copy of `source_dir`'s when
// `source_dir` is not empty and has one (usually the source model folder,
// whose generation settings the user chose), else the bos and eos token ids
// of `spec` (eos as a list when the config has several), as transformers
// derives it from a model config.
absl::Status WriteGenerationConfig(const io::ModelSpec& spec,
                                   const std::string& source_dir,
                                   const std::string& dir);

// Exports the model `spec` whose parameters are `params` (host memory,
// layout.total() floats in prefopt's layout) to the Hugging Face folder
// `out_dir`:
//  - config.json from io::WriteHfConfig, with "dtype" set to `dtype`;
//  - the weights converted to `dtype` (F32, F16 or BF16; narrowing rounds to
//    nearest even, as torch's .to() does) by io::WriteWeightStore, sharded at
//    `max_shard_bytes`; a tied model's layout has no lm_head.weight, so none
//    is written, as transformers does;
//  - generation_config.json by WriteGenerationConfig(spec, tokenizer_dir);
//  - the tokenizer files found in `tokenizer_dir` (none when it is empty or
//    has none).
// The folder appears whole or not at all: it is written as the sibling
// `out_dir.tmp.<pid>` and renamed into place. `out_dir` must not exist or be
// an empty directory; a non-empty one is an error rather than being replaced,
// so a mistyped --out never deletes anything.
absl::Status ExportHfModel(const std::string& out_dir,
                           const io::ModelSpec& spec,
                           const model::ParamLayout& layout,
                           const float* params, io::DType dtype,
                           size_t max_shard_bytes,
                           const std::string& tokenizer_dir);

}  // namespace prefopt::checkpoint

#endif  // PREFOPT_TRAINER_CHECKPOINT_HF_EXPORT_H_
