#include "trainer/io/append_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace prefopt::io {

std::string OpenForWritingError(const std::string& path, int err) {
  if (err == ELOOP) {
    return absl::StrCat(
        "cannot open ", path,
        " for writing: it is a symbolic link; prefopt does not write through "
        "links in the run directory (remove it)");
  }
  return absl::StrCat("cannot open ", path,
                      " for writing: ", std::strerror(err));
}

absl::StatusOr<AppendFile> AppendFile::Open(const std::string& path,
                                            Mode mode) {
  int flags = O_RDWR | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC;
  // A FIFO opened for reading and writing does not block; fstat then
  // refuses it.
  if (mode == Mode::kCreateNew) flags |= O_EXCL;
  const int fd = open(path.c_str(), flags, 0644);
  if (fd < 0) {
    const int err = errno;
    const std::string message = OpenForWritingError(path, err);
    if (err == EEXIST) return absl::AlreadyExistsError(message);
    return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound
                                      : absl::StatusCode::kFailedPrecondition,
                        message);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::InternalError(
        absl::StrCat("cannot stat ", path, ": ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot write ", path, ": it is not a regular file (remove it)"));
  }
  return AppendFile(path, fd, static_cast<uint64_t>(st.st_size));
}

AppendFile::AppendFile(AppendFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(other.size_) {}

AppendFile& AppendFile::operator=(AppendFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
  }
  return *this;
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::string> AppendFile::ReadAll() const {
  std::string contents;
  char buffer[1 << 16];
  for (off_t offset = 0;;) {
    const ssize_t n = pread(fd_, buffer, sizeof(buffer), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("cannot read ", path_, ": ", std::strerror(errno)));
    }
    if (n == 0) return contents;
    contents.append(buffer, static_cast<size_t>(n));
    offset += n;
  }
}

absl::Status AppendFile::Truncate(uint64_t size) {
  if (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    return absl::InternalError(absl::StrCat("cannot truncate ", path_, " to ",
                                            size,
                                            " bytes: ", std::strerror(errno)));
  }
  size_ = size;
  return absl::OkStatus();
}

absl::Status AppendFile::Append(std::string_view record) {
  std::string_view left = record;
  while (!left.empty()) {
    const ssize_t n = write(fd_, left.data(), left.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      // Cutting a file back needs no free space and is within any size
      // limit, so this normally restores the last whole record.
      const bool restored = ftruncate(fd_, static_cast<off_t>(size_)) == 0;
      return absl::InternalError(absl::StrCat(
          "cannot write ", path_, ": ", std::strerror(err),
          restored ? "; the file ends after its last complete record"
                   : "; the file may end in a partial record"));
    }
    left.remove_prefix(static_cast<size_t>(n));
  }
  size_ += record.size();
  return absl::OkStatus();
}

}  // namespace prefopt::io
