#include "trainer/util/input_file.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"

namespace prefopt::util {
namespace {

const char* KindOfFile(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a plain file";
}

}  // namespace

absl::Status CheckInputFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      path, " is ", KindOfFile(st.st_mode),
      ", not a regular file (prefopt reads its inputs from regular files "
      "only)"));
}

}  // namespace prefopt::util
