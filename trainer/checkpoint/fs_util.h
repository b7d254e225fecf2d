// File-system steps of the checkpoint and export writers, as absl::Status
// values whose messages name the path.
#ifndef PREFOPT_TRAINER_CHECKPOINT_FS_UTIL_H_
#define PREFOPT_TRAINER_CHECKPOINT_FS_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prefopt::checkpoint::internal {

// The whole contents of `path`; a missing file is NotFound.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// The size of the regular file `path`.
absl::StatusOr<uint64_t> FileSize(const std::string& path);

// Whether `path` exists (without following a final symlink).
bool PathExists(const std::string& path);

// Creates `dir` and its missing parents; an existing directory is fine.
absl::Status MakeDirectories(const std::string& dir);

// Flushes the directory entries of `dir` to disk, so that files created,
// renamed or removed in it survive a power loss.
absl::Status SyncDirectory(const std::string& dir);

// rename(2): atomic within one file system; replaces an empty directory.
absl::Status Rename(const std::string& from, const std::string& to);

// Removes `path` and, for a directory, everything in it (symlinks are
// removed, not followed).
absl::Status RemoveAll(const std::string& path);

// The names of the entries of directory `dir`, sorted.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir);

// The parent directory of `path` ("." for a bare name); trailing slashes are
// ignored.
std::string ParentOf(const std::string& path);

}  // namespace prefopt::checkpoint::internal

#endif  // PREFOPT_TRAINER_CHECKPOINT_FS_UTIL_H_
