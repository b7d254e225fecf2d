// Checkpoints that resume a run exactly, survive a crash at any moment, and
// whose model part is a Hugging Face folder.
//
// Layout (the manifest is proto/checkpoint.proto's CheckpointManifest):
//   run_dir/checkpoints/step_<N>/
//     COMPLETE               written last; holds the manifest's CRC-32C
//     manifest.textproto     every file with its size, every tensor with its
//                            CRC-32C, RNG states, data position, run metadata
//     config.json, generation_config.json, model.safetensors (fp32, Hugging
//                            Face names and layout), tokenizer files
//     optimizer.safetensors  AdamW moments "exp_avg", "exp_avg_sq" over the
//                            flat parameter buffer, or one
//                            optimizer-rank<r>-of-<n>.safetensors per ZeRO-1
//                            shard
//     extra.safetensors      extra tensor groups (SparsePO's mask network)
//
// Protocol. Every rank writes its files into
// run_dir/checkpoints/.tmp_step_<N>_<writer_id>/ (WriteRankFiles), each file
// flushed to disk, and last a small per-rank fragment listing them. After a
// barrier, rank 0 (Finalize) merges the fragments into manifest.textproto,
// flushes, renames the folder to step_<N>, flushes checkpoints/, and writes
// COMPLETE. A crash at any point leaves either a temporary folder or a
// step_<N> without COMPLETE, which readers skip and a later Finalize removes;
// earlier checkpoints are never touched before the new one is complete.
// All ranks must see run_dir on one shared file system.
#ifndef PREFOPT_TRAINER_CHECKPOINT_CHECKPOINT_H_
#define PREFOPT_TRAINER_CHECKPOINT_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "proto/checkpoint.pb.h"
#include "trainer/io/hf_config.h"
#include "trainer/model/param_layout.h"

namespace prefopt::checkpoint {

// The format_version this code writes and reads.
inline constexpr char kFormatVersion[] = "1";

// A range [begin, end) of the flat parameter buffer, in floats.
struct FlatRange {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
};

// The ZeRO-1 partition this library suggests: `total` floats split into
// `world_size` contiguous ranges of ceil(total / world_size) (the last ones
// shorter or empty). The loop may partition differently; checkpoints record
// the ranges actually used.
FlatRange EvenShardRange(size_t total, int rank, int world_size);

// `data` holds the values of the flat buffer over `range`.
struct FlatShard {
  FlatRange range;
  const float* data = nullptr;
};

// The values over `want` taken from `shards` (e.g. the ZeRO-1 shards written
// by N ranks, to give rank r of M its own). Fails when part of `want` is
// covered by no shard, or by two that overlap.
absl::StatusOr<std::vector<float>> Reshard(absl::Span<const FlatShard> shards,
                                           FlatRange want);

// A named fp32 tensor in host memory (product of shape floats).
struct HostTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Trained tensors outside the model (e.g. role "mask_net" for SparsePO's mask
// network), stored in extra.safetensors; names are unique over all groups.
struct TensorGroup {
  std::string role;
  std::vector<HostTensor> tensors;
};

// AdamW's moments over one range of the flat parameter buffer: the whole
// buffer without ZeRO, a rank's shard with ZeRO-1. Host memory,
// range.size() floats each.
struct OptimizerShard {
  FlatRange range;
  const float* exp_avg = nullptr;     // m
  const float* exp_avg_sq = nullptr;  // v
};

// What one rank saves. Host memory throughout: the loop copies device
// buffers to the host first.
struct CheckpointContents {
  // Run metadata, set by the loop: step, optimizer_step, config_text, the
  // three fingerprints, data, metrics_lines, zero_stage, and this rank's own
  // generators in rng (names unique across ranks). The library fills the
  // rest (format_version, files, tensors, world_size, hf_architecture,
  // flat_param_count, param_layout, writer_id). Finalize reads everything but
  // rng from rank 0's contents and collects rng from every rank.
  CheckpointManifest metadata;

  int rank = 0;
  int world_size = 1;
  // Names the launch: the same on every rank (NewWriterId() on rank 0,
  // broadcast). May be empty when world_size is 1: the process's own id.
  std::string writer_id;

  // Every rank: the parameter layout (the optimizer ranges refer to it).
  const model::ParamLayout* layout = nullptr;

  // Rank 0 only (ignored on other ranks): the model and its parameters
  // (layout->total() floats), extra tensor groups, and the folder whose
  // tokenizer files are copied into the checkpoint (empty: none).
  const io::ModelSpec* spec = nullptr;
  const float* params = nullptr;
  std::vector<TensorGroup> extra;
  std::string tokenizer_dir;

  // This rank's optimizer state: every rank's ZeRO-1 shard, or only rank 0's
  // whole-buffer state without ZeRO (other ranks leave it empty). The ranges
  // of all ranks must tile [0, layout->total()).
  std::optional<OptimizerShard> optimizer;
};

struct SaveOptions {
  // Keep the newest `keep_last_n` complete checkpoints (0 keeps all). The one
  // just written is always kept.
  int keep_last_n = 0;
};

struct SaveResult {
  std::string dir;  // run_dir/checkpoints/step_<N>
  // Folders removed: pruned checkpoints and leftovers of crashed or failed
  // saves.
  std::vector<std::string> removed;
  // Removals that failed. The checkpoint itself is complete regardless.
  std::vector<std::string> cleanup_errors;
};

// A fresh writer id for this launch: "<pid>-<16 hex digits of the clock>",
// unique even where pids repeat across restarts (pid 1 in containers).
std::string NewWriterId();

// "step_<N>".
std::string CheckpointDirName(int64_t step);

// Phase 1, on every rank: writes this rank's files (rank 0: config, model,
// extras, tokenizer; every rank: its optimizer shard) into the step's
// temporary folder, then the rank's fragment. Overwrites files left there by
// an earlier failed attempt of the same writer and step.
absl::Status WriteRankFiles(const std::string& run_dir,
                            const CheckpointContents& contents);

// Phase 2, on rank 0 only, after every rank's WriteRankFiles returned OK (a
// barrier): checks that every rank's fragment is there and the optimizer
// ranges tile the buffer, writes the manifest, moves the folder to step_<N>
// (replacing an older folder of that name), writes COMPLETE, then removes
// leftovers of other launches and of this launch's earlier failed saves, and
// prunes to keep_last_n. Folders this launch may still be writing (temporary
// folders of later steps) are never touched.
absl::StatusOr<SaveResult> Finalize(const std::string& run_dir,
                                    const CheckpointContents& contents,
                                    const SaveOptions& options);

// Both phases for a single-rank run (world_size 1). On failure the temporary
// folder is removed.
absl::StatusOr<SaveResult> SaveCheckpoint(const std::string& run_dir,
                                          const CheckpointContents& contents,
                                          const SaveOptions& options);

// Checks the checkpoint folder `checkpoint_dir` completely: COMPLETE present
// and matching the manifest's CRC-32C, the manifest parses and is
// consistent, every file listed has its recorded size (and CRC-32C for
// non-tensor files), every safetensors header agrees with the manifest, and
// every tensor's CRC-32C matches. Errors start "checkpoint <dir>:" and name
// the file and tensor, e.g. "checkpoint /r/checkpoints/step_40: tensor
// transformer.h.0.ln_1.weight in model.safetensors: CRC32C mismatch (stored
// 0x1a2b3c4d, computed 0x5e6f7a8b)".
absl::StatusOr<CheckpointManifest> VerifyCheckpoint(
    const std::string& checkpoint_dir);

struct LoadOptions {
  // Whether to read the optimizer state; a checkpoint without one is an error
  // when this is set.
  bool load_optimizer = true;
  // The range of the optimizer state to return (this rank's ZeRO-1 shard);
  // unset: the whole buffer. Any range works whatever world size wrote it.
  std::optional<FlatRange> optimizer_range;
};

// A tensor read back from extra.safetensors.
struct LoadedTensor {
  std::string role;
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

struct LoadedCheckpoint {
  std::string dir;
  CheckpointManifest manifest;
  // layout.total() floats in prefopt's layout (Conv1D weights transposed
  // back, alignment gaps zero).
  std::vector<float> params;
  // AdamW's moments over optimizer_range (empty when not loaded).
  FlatRange optimizer_range;
  std::vector<float> exp_avg;
  std::vector<float> exp_avg_sq;
  std::vector<LoadedTensor> extra;
};

// Reads a checkpoint folder for resume (or evaluation) into a model whose
// parameters are laid out as `layout`, which must match the layout the
// checkpoint records. Checks what VerifyCheckpoint checks, except that only
// the tensors read are CRC-checked (the optimizer shards outside the
// requested range are not).
absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(
    const std::string& checkpoint_dir, const model::ParamLayout& layout,
    const LoadOptions& options = {});

// The newest run_dir/checkpoints/step_<N> that passes VerifyCheckpoint. Newer
// ones that fail, and newer saves that never got past their temporary folder
// (killed while writing), are skipped, each adding "checkpoint
// <run_dir>/checkpoints/step_<N>: <why>" to `skipped_reasons` (may be null;
// newest first), so that --resume=latest can say what it fell back from.
// NotFound when no checkpoint verifies.
absl::StatusOr<std::string> FindLatestCheckpoint(
    const std::string& run_dir, std::vector<std::string>* skipped_reasons);

}  // namespace prefopt::checkpoint

#endif  // PREFOPT_TRAINER_CHECKPOINT_CHECKPOINT_H_
