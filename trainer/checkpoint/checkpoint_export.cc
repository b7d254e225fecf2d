#include "trainer/checkpoint/checkpoint_export.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/checkpoint/fs_util.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/io/hf_config.h"
#include "trainer/model/decoder.h"

namespace prefopt::checkpoint {

absl::StatusOr<CheckpointExport> ExportCheckpoint(const std::string& checkpoint,
                                                  const std::string& out_dir,
                                                  io::DType dtype,
                                                  size_t max_shard_bytes) {
  if (!internal::PathExists(checkpoint)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", checkpoint, ": no such folder"));
  }
  CheckpointExport result;
  result.checkpoint_dir = checkpoint;
  // A run dir: its checkpoints/ folder, and no manifest of its own.
  if (!internal::PathExists(checkpoint + "/manifest.textproto") &&
      internal::PathExists(checkpoint + "/checkpoints")) {
    absl::StatusOr<std::string> latest =
        FindLatestCheckpoint(checkpoint, &result.skipped);
    if (!latest.ok()) return latest.status();
    result.checkpoint_dir = *latest;
  }
  absl::StatusOr<CheckpointManifest> manifest =
      VerifyCheckpoint(result.checkpoint_dir);
  if (!manifest.ok()) return manifest.status();
  result.step = manifest->step();

  absl::StatusOr<io::ModelSpec> spec = io::ReadHfConfig(result.checkpoint_dir);
  if (!spec.ok()) return spec.status();
  // The Decoder gives the parameter layout the checkpoint was written in; no
  // forward pass runs, so the smallest capacity does.
  kernels::CpuBackend backend;
  absl::StatusOr<std::unique_ptr<model::Decoder>> decoder =
      model::Decoder::Create(*spec, &backend, {1, 1, 1}, false);
  if (!decoder.ok()) return decoder.status();
  LoadOptions options;
  options.load_optimizer = false;
  absl::StatusOr<LoadedCheckpoint> loaded =
      LoadCheckpoint(result.checkpoint_dir, (*decoder)->layout(), options);
  if (!loaded.ok()) return loaded.status();
  if (absl::Status s = ExportHfModel(out_dir, *spec, (*decoder)->layout(),
                                     loaded->params.data(), dtype,
                                     max_shard_bytes, result.checkpoint_dir);
      !s.ok()) {
    return s;
  }
  return result;
}

absl::StatusOr<io::DType> ParseExportDType(absl::string_view text) {
  const std::string name = absl::AsciiStrToLower(text);
  if (name == "fp32" || name == "float32") return io::DType::kF32;
  if (name == "fp16" || name == "float16") return io::DType::kF16;
  if (name == "bf16" || name == "bfloat16") return io::DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype: expected bf16, fp16 or fp32, got \"", text, "\""));
}

absl::StatusOr<size_t> ParseByteSize(absl::string_view text) {
  static constexpr std::pair<const char*, uint64_t> kUnits[] = {
      {"KiB", uint64_t{1} << 10}, {"MiB", uint64_t{1} << 20},
      {"GiB", uint64_t{1} << 30}, {"KB", 1'000},
      {"MB", 1'000'000},          {"GB", 1'000'000'000}};
  absl::string_view digits = text;
  uint64_t unit = 1;
  for (const auto& [suffix, factor] : kUnits) {
    const absl::string_view s = suffix;
    if (digits.size() > s.size() &&
        digits.substr(digits.size() - s.size()) == s) {
      digits.remove_suffix(s.size());
      unit = factor;
      break;
    }
  }
  uint64_t value = 0;
  const bool digits_only =
      !digits.empty() &&
      digits.find_first_not_of("0123456789") == absl::string_view::npos;
  if (!digits_only || !absl::SimpleAtoi(digits, &value) || value == 0 ||
      value > std::numeric_limits<size_t>::max() / unit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_shard_size: expected a positive number of bytes, optionally "
        "with KB, MB, GB, KiB, MiB or GiB (e.g. 5GB), got \"",
        text, "\""));
  }
  return static_cast<size_t>(value * unit);
}

}  // namespace prefopt::checkpoint
