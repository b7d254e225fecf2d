#ifndef PREFOPT_TRAINER_IO_TEST_UTIL_H_
#define PREFOPT_TRAINER_IO_TEST_UTIL_H_

#include <sys/resource.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace prefopt::io::testing {

// Path of `name` under trainer/io/testdata in the test's runfiles.
std::string TestdataPath(std::string_view name);

// Creates the directory `name` under the test's TEST_TMPDIR and returns its
// path; each test must use its own name.
std::string NewTempDir(std::string_view name);

// The whole contents of `path` (empty if it cannot be read).
std::string ReadBytes(const std::string& path);

// Writes `bytes` to `path`, replacing it.
void WriteBytes(const std::string& path, std::string_view bytes);

// Copies the regular files of directory `from` into directory `to`.
void CopyDir(const std::string& from, const std::string& to);

// Whether `path` exists.
bool Exists(const std::string& path);

// The number of entries of directory `dir` whose names contain `part`, or -1
// if it cannot be listed.
int CountEntriesContaining(const std::string& dir, std::string_view part);

// Succeeds when `status` is an error whose message contains every one of
// `parts`.
::testing::AssertionResult ErrorContains(
    const absl::Status& status, std::initializer_list<std::string_view> parts);

// Makes writes past `max_bytes` in any file fail with EFBIG while it lives,
// as a full disk fails them with ENOSPC (SIGXFSZ, which would otherwise end
// the process, is ignored meanwhile). Needs no mount and works as root.
class ScopedFileSizeLimit {
 public:
  explicit ScopedFileSizeLimit(rlim_t max_bytes);
  ScopedFileSizeLimit(const ScopedFileSizeLimit&) = delete;
  ScopedFileSizeLimit& operator=(const ScopedFileSizeLimit&) = delete;
  ~ScopedFileSizeLimit();

 private:
  struct rlimit saved_;
  void (*saved_handler_)(int);
};

}  // namespace prefopt::io::testing

#endif  // PREFOPT_TRAINER_IO_TEST_UTIL_H_
