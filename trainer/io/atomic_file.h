#ifndef PREFOPT_TRAINER_IO_ATOMIC_FILE_H_
#define PREFOPT_TRAINER_IO_ATOMIC_FILE_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prefopt::io {

// Writes a file so that readers see either the old contents of `path` or the
// complete new contents, never a partial file. Bytes go to a temporary file
// `path + ".tmp.<pid>"` in the same directory; Commit() flushes it to disk,
// renames it over `path` and flushes the directory. If the writer is
// destroyed without a successful Commit(), or a step before the rename fails,
// the temporary file is removed and `path` is left as it was. If flushing the
// directory fails after the rename, the new file is removed from `path` so
// that an error never leaves a file there whose durability is unknown. The
// temporary name is per process, so a process must not write the same path
// from two writers at once. No symbolic link is followed: one at the
// temporary name is removed, one at `path` is replaced by the new file.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Create(const std::string& path);

  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  // Appends `bytes` to the temporary file.
  absl::Status Append(std::string_view bytes);

  // Makes the written bytes the contents of path(). The writer is finished
  // afterwards, whether or not this succeeds.
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd);
  void Abandon();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
};

// Replaces the contents of `path` with `contents` through AtomicFileWriter.
absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view contents);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_ATOMIC_FILE_H_
