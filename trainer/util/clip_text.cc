#include "trainer/util/clip_text.h"

#include "absl/strings/str_cat.h"

namespace prefopt::util {

std::string ClipText(absl::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  size_t end = max_bytes;
  // Back to the start of the character the cut would split (continuation
  // bytes are 10xxxxxx).
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) {
    --end;
  }
  return absl::StrCat(text.substr(0, end), "\u2026 (", text.size(), " bytes)");
}

}  // namespace prefopt::util
