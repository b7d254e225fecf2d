// Typed access to the fields of a parsed tokenizer.json. Every error is
// InvalidArgument and starts with the JSON path of the offending value (for
// example `pre_tokenizer.pretokenizers[1].behavior`); the caller prefixes the
// file name.
#ifndef PREFOPT_TRAINER_TOKENIZER_JSON_UTIL_H_
#define PREFOPT_TRAINER_TOKENIZER_JSON_UTIL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace prefopt::tokenizer {

using Json = nlohmann::json;

// Debian's Abseil has its own absl::string_view, which absl::StrCat and the
// heterogeneous lookups of absl hash containers take; this views the same
// characters.
inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view StdView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

// `parent.key`, or `key` at the root.
std::string FieldPath(std::string_view parent, std::string_view key);
// `parent[index]`.
std::string IndexPath(std::string_view parent, size_t index);

// InvalidArgument "`path`: `message`".
absl::Status JsonError(std::string_view path, std::string_view message);

// The error for a component whose "type" this reader does not implement:
// names the kind (e.g. "pre_tokenizer"), the type, the path and the types
// that are supported.
absl::Status UnsupportedType(std::string_view path, std::string_view kind,
                             std::string_view type, std::string_view supported);

// The field `key` of the object `object` at `path`; it must be present and
// not null.
absl::StatusOr<const Json*> RequiredField(const Json& object,
                                          std::string_view key,
                                          std::string_view path);

// The value of the "type" field of the component object at `path`.
absl::StatusOr<std::string> ComponentType(const Json& object,
                                          std::string_view path);

absl::StatusOr<std::string> GetString(const Json& object, std::string_view key,
                                      std::string_view path);
// Absent or null gives std::nullopt.
absl::StatusOr<std::optional<std::string>> GetOptionalString(
    const Json& object, std::string_view key, std::string_view path);
// Absent or null gives `default_value`.
absl::StatusOr<bool> GetBool(const Json& object, std::string_view key,
                             std::string_view path, bool default_value);
absl::StatusOr<int64_t> GetInt(const Json& object, std::string_view key,
                               std::string_view path);

// A non-negative integer that fits a token id.
absl::StatusOr<int32_t> AsTokenId(const Json& value, std::string_view path);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_JSON_UTIL_H_
