#include "trainer/checkpoint/hf_export.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "trainer/checkpoint/fs_util.h"
#include "trainer/io/atomic_file.h"
#include "trainer/io/json_file.h"
#include "trainer/io/weight_store.h"

namespace prefopt::checkpoint {
namespace {

std::string TorchDtypeName(io::DType dtype) {
  switch (dtype) {
    case io::DType::kBF16:
      return "bfloat16";
    case io::DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

// Writes the folder's contents into `dir`, which exists and is empty.
absl::Status WriteExportFiles(const std::string& dir, const io::ModelSpec& spec,
                              const model::ParamLayout& layout,
                              const float* params, io::DType dtype,
                              size_t max_shard_bytes,
                              const std::string& tokenizer_dir) {
  io::ModelSpec out_spec = spec;
  out_spec.torch_dtype = TorchDtypeName(dtype);
  if (absl::Status s = io::WriteHfConfig(out_spec, dir); !s.ok()) return s;

  std::vector<std::vector<float>> storage;
  const std::vector<io::TensorToWrite> tensors =
      HfTensors(layout, params, &storage);
  if (absl::Status s =
          io::WriteWeightStore(dir, tensors, dtype, max_shard_bytes);
      !s.ok()) {
    return s;
  }

  if (absl::Status s = WriteGenerationConfig(spec, tokenizer_dir, dir);
      !s.ok()) {
    return s;
  }

  if (!tokenizer_dir.empty()) {
    absl::StatusOr<std::vector<std::string>> copied =
        CopyTokenizerFiles(tokenizer_dir, dir);
    if (!copied.ok()) return copied.status();
  }
  return internal::SyncDirectory(dir);
}

}  // namespace

const std::vector<std::string>& TokenizerFileNames() {
  static const std::vector<std::string>* names = new std::vector<std::string>{
      "tokenizer.json",
      "tokenizer_config.json",
      "special_tokens_map.json",
      "vocab.json",
      "merges.txt",
      "tokenizer.model",
      "added_tokens.json",
      "chat_template.jinja",
  };
  return *names;
}

std::vector<io::TensorToWrite> HfTensors(
    const model::ParamLayout& layout, const float* params,
    std::vector<std::vector<float>>* storage) {
  const std::vector<model::HfTensorRef> refs = layout.HfTensors();
  std::vector<io::TensorToWrite> tensors;
  storage->clear();
  // Reserved so that pointers into earlier entries stay valid.
  storage->reserve(refs.size());
  for (const model::HfTensorRef& ref : refs) {
    const float* data = params + ref.offset;
    if (ref.transposed) {
      std::vector<float>& hf = storage->emplace_back(ref.numel);
      model::LayoutToHf(ref, data, hf.data());
      data = hf.data();
    }
    tensors.push_back({ref.name, ref.shape, data});
  }
  return tensors;
}

absl::StatusOr<std::vector<std::string>> CopyTokenizerFiles(
    const std::string& from_dir, const std::string& to_dir) {
  std::vector<std::string> copied;
  for (const std::string& name : TokenizerFileNames()) {
    const std::string from = from_dir + "/" + name;
    if (!internal::PathExists(from)) continue;
    absl::StatusOr<std::string> contents = internal::ReadFile(from);
    if (!contents.ok()) return contents.status();
    if (absl::Status s =
            io::WriteFileAtomically(to_dir + "/" + name, *contents);
        !s.ok()) {
      return s;
    }
    copied.push_back(name);
  }
  return copied;
}

absl::Status WriteGenerationConfig(const io::ModelSpec& spec,
                                   const std::string& source_dir,
                                   const std::string& dir) {
  const std::string source = source_dir + "/generation_config.json";
  if (!source_dir.empty() && internal::PathExists(source)) {
    absl::StatusOr<std::string> text = internal::ReadFile(source);
    if (!text.ok()) return text.status();
    return io::WriteFileAtomically(dir + "/generation_config.json", *text);
  }
  nlohmann::json config = {{"_from_model_config", true}};
  if (spec.bos_token_id.has_value())
    config["bos_token_id"] = *spec.bos_token_id;
  if (spec.eos_token_id.has_value()) {
    if (spec.extra_eos_token_ids.empty()) {
      config["eos_token_id"] = *spec.eos_token_id;
    } else {
      std::vector<int64_t> ids = {*spec.eos_token_id};
      ids.insert(ids.end(), spec.extra_eos_token_ids.begin(),
                 spec.extra_eos_token_ids.end());
      config["eos_token_id"] = ids;
    }
  }
  return io::WriteJsonFile(dir + "/generation_config.json", config);
}

absl::Status ExportHfModel(const std::string& out_dir,
                           const io::ModelSpec& spec,
                           const model::ParamLayout& layout,
                           const float* params, io::DType dtype,
                           size_t max_shard_bytes,
                           const std::string& tokenizer_dir) {
  if (dtype != io::DType::kF32 && dtype != io::DType::kF16 &&
      dtype != io::DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "export to ", out_dir, ": the dtype must be F32, F16 or BF16"));
  }
  if (spec.tie_word_embeddings && layout.Find("lm_head.weight") != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "export to ", out_dir,
        ": the model ties its word embeddings but its parameters include a "
        "separate lm_head.weight"));
  }
  if (internal::PathExists(out_dir)) {
    absl::StatusOr<std::vector<std::string>> entries =
        internal::ListDirectory(out_dir);
    if (!entries.ok()) return entries.status();
    if (!entries->empty()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "export to ", out_dir, ": the folder exists and is not empty (",
          entries->size(),
          " entries); remove it or choose another output "
          "folder"));
    }
  }
  std::string target = out_dir;
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  const std::string parent = internal::ParentOf(target);
  if (absl::Status s = internal::MakeDirectories(parent); !s.ok()) return s;
  const std::string temp = absl::StrCat(target, ".tmp.", getpid());
  // A folder of that name is a leftover of an earlier process with this pid.
  if (absl::Status s = internal::RemoveAll(temp); !s.ok()) return s;
  if (absl::Status s = internal::MakeDirectories(temp); !s.ok()) return s;

  absl::Status s = WriteExportFiles(temp, spec, layout, params, dtype,
                                    max_shard_bytes, tokenizer_dir);
  if (s.ok()) s = internal::Rename(temp, target);
  if (s.ok()) s = internal::SyncDirectory(parent);
  if (!s.ok()) {
    internal::RemoveAll(temp).IgnoreError();
    return s;
  }
  return absl::OkStatus();
}

}  // namespace prefopt::checkpoint
