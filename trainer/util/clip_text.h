// Shortens user input that an error message echoes: a config may hold a
// field name or value megabytes long, which a message must not repeat whole.
#ifndef PREFOPT_TRAINER_UTIL_CLIP_TEXT_H_
#define PREFOPT_TRAINER_UTIL_CLIP_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace prefopt::util {

// How much of an echoed input error messages keep.
inline constexpr size_t kMaxEchoBytes = 200;

// `text` when it has at most `max_bytes` bytes; otherwise its first
// `max_bytes` bytes (fewer, so as not to split a UTF-8 character) followed by
// "… (N bytes)", N being the size of the whole text.
std::string ClipText(absl::string_view text, size_t max_bytes = kMaxEchoBytes);

}  // namespace prefopt::util

#endif  // PREFOPT_TRAINER_UTIL_CLIP_TEXT_H_
