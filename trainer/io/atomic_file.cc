#include "trainer/io/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "trainer/io/append_file.h"

namespace prefopt::io {
namespace {

absl::Status ErrnoError(const std::string& what, const std::string& path,
                        int err) {
  return absl::Status(
      err == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kInternal,
      absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path, std::string temp_path,
                                   int fd)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

absl::StatusOr<AtomicFileWriter> AtomicFileWriter::Create(
    const std::string& path) {
  std::string temp_path = absl::StrCat(path, ".tmp.", getpid());
  // The temporary name is predictable, so anyone who can write into the
  // directory could plant a symbolic link there: opening it with O_TRUNC
  // would truncate the link's target. A leftover entry (a crashed writer's
  // file, or such a link) is removed rather than followed, and the file is
  // created exclusively; a link planted again in between fails the open.
  unlink(temp_path.c_str());
  const int fd =
      open(temp_path.c_str(),
           O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound
                                      : absl::StatusCode::kInternal,
                        OpenForWritingError(temp_path, err));
  }
  return AtomicFileWriter(path, std::move(temp_path), fd);
}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)) {}

AtomicFileWriter& AtomicFileWriter::operator=(
    AtomicFileWriter&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

void AtomicFileWriter::Abandon() {
  if (fd_ < 0) return;
  close(fd_);
  fd_ = -1;
  unlink(temp_path_.c_str());
}

absl::Status AtomicFileWriter::Append(std::string_view bytes) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing ", path_, ": the writer is already finished"));
  }
  while (!bytes.empty()) {
    const ssize_t n = write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      Abandon();
      return ErrnoError(absl::StrCat("cannot write ", path_, " (through"),
                        absl::StrCat(temp_path_, ")"), err);
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing ", path_, ": the writer is already finished"));
  }
  if (fsync(fd_) != 0) {
    const int err = errno;
    Abandon();
    return ErrnoError(absl::StrCat("cannot flush ", path_, " (through"),
                      absl::StrCat(temp_path_, ")"), err);
  }
  const int fd = std::exchange(fd_, -1);
  if (close(fd) != 0) {
    const int err = errno;
    unlink(temp_path_.c_str());
    return ErrnoError("cannot close", temp_path_, err);
  }
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    unlink(temp_path_.c_str());
    return ErrnoError(absl::StrCat("cannot rename ", temp_path_, " to"), path_,
                      err);
  }
  const std::string dir = DirectoryOf(path_);
  const int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || fsync(dir_fd) != 0) {
    const int err = errno;
    if (dir_fd >= 0) close(dir_fd);
    unlink(path_.c_str());
    return ErrnoError("cannot flush directory", dir, err);
  }
  close(dir_fd);
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view contents) {
  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path);
  if (!writer.ok()) return writer.status();
  if (absl::Status s = writer->Append(contents); !s.ok()) return s;
  return writer->Commit();
}

}  // namespace prefopt::io
