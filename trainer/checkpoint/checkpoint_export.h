// `prefopt export`: a training checkpoint's model as a Hugging Face folder.
#ifndef PREFOPT_TRAINER_CHECKPOINT_CHECKPOINT_EXPORT_H_
#define PREFOPT_TRAINER_CHECKPOINT_CHECKPOINT_EXPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "trainer/io/safetensors.h"

namespace prefopt::checkpoint {

// The shard size `prefopt export` uses unless told otherwise: transformers'
// save_pretrained default ("5GB").
inline constexpr size_t kDefaultMaxShardBytes = 5'000'000'000;

struct CheckpointExport {
  // The checkpoint folder exported (the latest one when given a run dir).
  std::string checkpoint_dir;
  int64_t step = 0;
  // Newer checkpoints of the run dir that were skipped (FindLatestCheckpoint).
  std::vector<std::string> skipped;
};

// Exports the model of `checkpoint` to the Hugging Face folder `out_dir`
// with ExportHfModel (its config.json, generation_config.json and tokenizer
// files are the checkpoint's). `checkpoint` is a checkpoint folder
// (run_dir/checkpoints/step_<N>), or a run dir, whose latest complete
// checkpoint is taken. The checkpoint is verified completely first, so a
// truncated or corrupted one is reported (naming the file and tensor) rather
// than exported.
absl::StatusOr<CheckpointExport> ExportCheckpoint(const std::string& checkpoint,
                                                  const std::string& out_dir,
                                                  io::DType dtype,
                                                  size_t max_shard_bytes);

// The dtype of `prefopt export --dtype`: "fp32", "fp16" or "bf16" (also
// "float32", "float16", "bfloat16", any case).
absl::StatusOr<io::DType> ParseExportDType(absl::string_view text);

// A size in bytes: a whole number, optionally followed by KB, MB or GB
// (powers of 1000, as transformers' max_shard_size) or KiB, MiB or GiB
// (powers of 1024), e.g. "5GB", "500MiB", "1000000". Must be > 0.
absl::StatusOr<size_t> ParseByteSize(absl::string_view text);

}  // namespace prefopt::checkpoint

#endif  // PREFOPT_TRAINER_CHECKPOINT_CHECKPOINT_EXPORT_H_
