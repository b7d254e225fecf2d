#ifndef PREFOPT_TRAINER_IO_WEIGHT_STORE_H_
#define PREFOPT_TRAINER_IO_WEIGHT_STORE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "trainer/io/safetensors.h"

namespace prefopt::io {

// The weights of a Hugging Face model folder: either one `model.safetensors`
// or the shards listed by `model.safetensors.index.json`, seen as one set of
// named tensors.
class WeightStore {
 public:
  // Opens `model_dir`/model.safetensors if present, else the index and every
  // shard it names. Errors name the folder and the file at fault: neither file
  // present, an unreadable or invalid shard, or an index entry whose shard
  // lacks the tensor.
  static absl::StatusOr<WeightStore> Open(const std::string& model_dir);

  WeightStore(WeightStore&&) = default;
  WeightStore& operator=(WeightStore&&) = default;

  const std::string& model_dir() const { return model_dir_; }

  bool Has(std::string_view name) const;

  // The tensor called `name`, or null.
  const TensorInfo* Find(std::string_view name) const;

  // The file that holds tensor `name`, or null.
  const SafetensorsFile* FileOf(std::string_view name) const;

  // Converts tensor `name` to fp32 into `out` (see SafetensorsFile::ReadFloat);
  // errors name the shard file, the tensor and the expected and found shapes.
  absl::Status ReadFloat(std::string_view name,
                         absl::Span<const int64_t> expected_shape,
                         float* out) const;

  // All tensor names, sorted.
  std::vector<std::string> Names() const;

  // The dtype that holds the most elements across all tensors (ties go to the
  // dtype listed first in DType), e.g. BF16 for a bf16 checkpoint whose few
  // norm weights are F32.
  absl::StatusOr<DType> StorageDType() const;

 private:
  WeightStore() = default;

  std::string model_dir_;
  std::vector<SafetensorsFile> files_;
  // Tensor name -> index into files_.
  std::map<std::string, size_t, std::less<>> file_index_;
};

// Writes `tensors`, converted to `dtype` (F32, F16 or BF16), into `model_dir`
// (created if missing) the way transformers' save_pretrained does: one
// `model.safetensors` when they fit in `max_shard_bytes`, else shards
// `model-00001-of-0000N.safetensors` filled greedily in the given order (a
// tensor larger than the limit gets a shard of its own) plus
// `model.safetensors.index.json`. Every file carries the metadata
// {"format": "pt"} and is replaced atomically; weight files of an earlier
// save that the new layout does not use are removed afterwards.
absl::Status WriteWeightStore(const std::string& model_dir,
                              const std::vector<TensorToWrite>& tensors,
                              DType dtype, size_t max_shard_bytes);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_WEIGHT_STORE_H_
