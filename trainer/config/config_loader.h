// Loads a TrainConfig from a .textproto file: parse, apply command-line
// overrides (--set=path.to.field=value), fill defaults, resolve relative paths,
// validate. Every error names the file position or the field path and says
// what was expected.
#ifndef PREFOPT_TRAINER_CONFIG_CONFIG_LOADER_H_
#define PREFOPT_TRAINER_CONFIG_CONFIG_LOADER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace prefopt::config {

// Reads the text-format TrainConfig at `path` and returns it ready for use:
//   1. parse; syntax errors and unknown fields are reported as
//      "path:line:column: message" (1-based);
//   2. resolve relative model, data and resume paths against the directory of
//      `path`;
//   3. apply `overrides` in order (each "path.to.field=value", see
//      ApplyOverride); relative paths they set are resolved against the
//      working directory;
//   4. FillDefaults;
//   5. ValidateTrainConfig.
// All paths in the result are absolute.
absl::StatusOr<prefopt::TrainConfig> LoadTrainConfig(
    const std::string& path, const std::vector<std::string>& overrides);

// Applies one command-line override "path.to.field=value" to `config`.
// The path walks message fields by name; intermediate messages are created,
// and naming a member of a oneof selects that member. The value is parsed by
// the field's type: integers (range-checked), float/double (finite), bool
// (true/false/1/0), string (taken verbatim), enum (value name, exact case).
// A repeated field takes a comma-separated list that replaces the current
// list (an empty value gives an empty list). A message field takes a text-
// format message in braces, e.g. "objective.dpo={beta: 0.2}", which replaces
// its contents. Errors start with "--set=<override>: ".
absl::Status ApplyOverride(const std::string& override_text,
                           prefopt::TrainConfig* config);

// Replaces unset (zero or absent) fields by their documented defaults
// (config.proto), TRL's where TRL has the setting: objective.dpo.beta 0.1;
// optimizer.lr 1e-6 for preference and 2e-5 for demonstration objectives,
// beta1 0.9, beta2 0.999, eps 1e-8, max_grad_norm 1; schedule.kind LINEAR;
// batch.micro_batch_size 8; num_epochs 3 when max_steps is 0; seed 42;
// data.max_length 1024, data.shuffle true; log_every_steps 1;
// model.init_std 0.02 for a from-scratch model;
// save_on_signal true. batch.global_batch_size depends on the world size
// (FillBatchForWorld).
void FillDefaults(prefopt::TrainConfig* config);

// An unset batch.global_batch_size becomes micro_batch_size × world_size (one
// micro-batch per rank and step, as TRL's per-device batch). Fails, naming
// the field, when that product does not fit the field.
absl::Status FillBatchForWorld(int world_size, prefopt::TrainConfig* config);

// Checks every field of a config whose defaults are filled. Reports all
// problems at once, one per line, each starting with the field path, e.g.
// "optimizer.lr: must be > 0, got 0".
absl::Status ValidateTrainConfig(const prefopt::TrainConfig& config);

// Checks that batch.global_batch_size is a multiple of
// batch.micro_batch_size × world_size, so that every rank runs the same number
// of accumulation steps.
absl::Status CheckBatchForWorld(const prefopt::TrainConfig& config,
                                int world_size);

// Micro-batches each rank runs per optimizer step:
// global_batch_size / (micro_batch_size × world_size).
// Requires CheckBatchForWorld(config, world_size).ok().
int GradientAccumulationSteps(const prefopt::TrainConfig& config,
                              int world_size);

// The config as text format, for the run directory, preceded by a one-line
// comment saying that it is the resolved config. LoadTrainConfig reads it back
// to the same message.
std::string ResolvedConfigText(const prefopt::TrainConfig& config);

}  // namespace prefopt::config

#endif  // PREFOPT_TRAINER_CONFIG_CONFIG_LOADER_H_
