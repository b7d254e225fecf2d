// Test support: a checkpoint edited by hand and signed again, whose checksum
// no longer gives the edit away, for tests of the manifest checks.
#ifndef PREFOPT_TRAINER_CHECKPOINT_FORGE_MANIFEST_H_
#define PREFOPT_TRAINER_CHECKPOINT_FORGE_MANIFEST_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "proto/checkpoint.pb.h"

namespace prefopt::checkpoint {

// Rewrites the manifest of the checkpoint folder `dir` after `edit` and signs
// it again as Finalize does (COMPLETE holds the manifest's CRC-32C).
absl::Status ForgeManifest(
    const std::string& dir,
    const std::function<void(CheckpointManifest*)>& edit);

}  // namespace prefopt::checkpoint

#endif  // PREFOPT_TRAINER_CHECKPOINT_FORGE_MANIFEST_H_
