// The check every reader of an input file (config, data, model and tokenizer
// files, caches, checkpoints) makes before opening it. A FIFO blocks open(2)
// until a writer appears, possibly forever, and a device such as /dev/zero
// never reaches its end, so reading either hangs the run or exhausts memory.
#ifndef PREFOPT_TRAINER_UTIL_INPUT_FILE_H_
#define PREFOPT_TRAINER_UTIL_INPUT_FILE_H_

#include <string>

#include "absl/status/status.h"

namespace prefopt::util {

// OK when `path` is a regular file (symlinks followed), and when stat(2)
// cannot see it at all: the caller's open then reports the missing or
// unreadable file as it would anyway. Otherwise InvalidArgument naming the
// path and what it is, e.g. "/dev/zero is a character device, not a regular
// file".
absl::Status CheckInputFile(const std::string& path);

}  // namespace prefopt::util

#endif  // PREFOPT_TRAINER_UTIL_INPUT_FILE_H_
