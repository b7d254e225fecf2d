// Which run directories prefopt writes into.
#ifndef PREFOPT_TRAINER_IO_RUN_DIR_H_
#define PREFOPT_TRAINER_IO_RUN_DIR_H_

#include <string>

#include "absl/status/status.h"

namespace prefopt::io {

// Succeeds when `dir` (an existing directory; a symbolic link to one is
// followed, as the user named it) is ours to write: owned by the effective
// user, and not writable by every user. A run resumes from the checkpoints,
// caches and metrics it finds in its run directory, so anyone else who can
// create entries there could plant links that redirect prefopt's writes or
// files that a resumed run trusts. The sticky bit does not change that (it
// only stops others removing our entries), so a world-writable directory
// such as /tmp itself is refused with or without it. Group-writable
// directories are accepted: shared project folders on clusters are, and
// their group is trusted with the project's runs.
absl::Status CheckRunDirectory(const std::string& dir);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_RUN_DIR_H_
