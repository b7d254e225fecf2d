// A file written by appending whole records (metrics.jsonl lines, TensorBoard
// events) that never ends in a partial record and is never opened through a
// symbolic link.
#ifndef PREFOPT_TRAINER_IO_APPEND_FILE_H_
#define PREFOPT_TRAINER_IO_APPEND_FILE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prefopt::io {

class AppendFile {
 public:
  enum class Mode {
    // Opens `path`, creating it if missing; its contents are kept.
    kOpenOrCreate,
    // Creates `path`; an existing entry of any kind is AlreadyExists.
    kCreateNew,
  };

  // Opens `path` for appending. A symbolic link at `path` is refused, not
  // followed: in a run directory a planted link would otherwise have
  // prefopt truncate or extend whatever file it points to. Anything but a
  // regular file is refused too.
  static absl::StatusOr<AppendFile> Open(const std::string& path, Mode mode);

  AppendFile(AppendFile&& other) noexcept;
  AppendFile& operator=(AppendFile&& other) noexcept;
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  ~AppendFile();

  // The whole current contents.
  absl::StatusOr<std::string> ReadAll() const;

  // Cuts the file to its first `size` bytes; later appends follow them.
  absl::Status Truncate(uint64_t size);

  // Appends `record` entirely or not at all: when a write fails (a full
  // disk, a file size limit) the bytes of `record` already written are cut
  // off again, so that the file still ends after the last whole record.
  absl::Status Append(std::string_view record);

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

 private:
  AppendFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The message for a failed open(2) of `path` for writing: ELOOP under
// O_NOFOLLOW means a symbolic link, which strerror calls "Too many levels of
// symbolic links".
std::string OpenForWritingError(const std::string& path, int err);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_APPEND_FILE_H_
