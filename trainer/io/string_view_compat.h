#ifndef PREFOPT_TRAINER_IO_STRING_VIEW_COMPAT_H_
#define PREFOPT_TRAINER_IO_STRING_VIEW_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace prefopt::io {

// Debian's Abseil is built with its own absl::string_view, distinct from
// std::string_view, so absl::StrCat does not accept the latter. This views the
// same characters as an absl::string_view.
inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_STRING_VIEW_COMPAT_H_
