#include "trainer/io/run_dir.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace prefopt::io {

absl::Status CheckRunDirectory(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "run_dir: ", dir, ": cannot stat: ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("run_dir: ", dir, " is not a directory"));
  }
  if (st.st_uid != geteuid()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "run_dir: ", dir, " is owned by uid ", st.st_uid,
        ", not by this user (uid ", geteuid(),
        "); prefopt writes only into run directories of its own user (name "
        "a new folder)"));
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "run_dir: %s is writable by every user (mode %04o), who could plant "
        "links or checkpoints in it; run `chmod o-w %s` or name a new folder",
        dir, st.st_mode & 07777, dir));
  }
  return absl::OkStatus();
}

}  // namespace prefopt::io
