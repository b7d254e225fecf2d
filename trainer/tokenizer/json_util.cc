#include "trainer/tokenizer/json_util.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace prefopt::tokenizer {

std::string FieldPath(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return absl::StrCat(AbslView(parent), ".", AbslView(key));
}

std::string IndexPath(std::string_view parent, size_t index) {
  return absl::StrCat(AbslView(parent), "[", index, "]");
}

absl::Status JsonError(std::string_view path, std::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(AbslView(path), ": ", AbslView(message)));
}

absl::Status UnsupportedType(std::string_view path, std::string_view kind,
                             std::string_view type,
                             std::string_view supported) {
  return JsonError(
      path, absl::StrCat(
                AbslView(kind), " type \"", AbslView(type),
                "\" is not supported (supported: ", AbslView(supported), ")"));
}

absl::StatusOr<const Json*> RequiredField(const Json& object,
                                          std::string_view key,
                                          std::string_view path) {
  if (!object.is_object()) {
    return JsonError(
        path, absl::StrCat("expected an object, found ", object.type_name()));
  }
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return JsonError(FieldPath(path, key), "missing field");
  }
  return &*it;
}

absl::StatusOr<std::string> ComponentType(const Json& object,
                                          std::string_view path) {
  return GetString(object, "type", path);
}

absl::StatusOr<std::string> GetString(const Json& object, std::string_view key,
                                      std::string_view path) {
  absl::StatusOr<const Json*> field = RequiredField(object, key, path);
  if (!field.ok()) return field.status();
  if (!(*field)->is_string()) {
    return JsonError(
        FieldPath(path, key),
        absl::StrCat("expected a string, found ", (*field)->type_name()));
  }
  return (*field)->get<std::string>();
}

absl::StatusOr<std::optional<std::string>> GetOptionalString(
    const Json& object, std::string_view key, std::string_view path) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) {
    return JsonError(
        FieldPath(path, key),
        absl::StrCat("expected a string, found ", it->type_name()));
  }
  return std::optional<std::string>(it->get<std::string>());
}

absl::StatusOr<bool> GetBool(const Json& object, std::string_view key,
                             std::string_view path, bool default_value) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return default_value;
  if (!it->is_boolean()) {
    return JsonError(
        FieldPath(path, key),
        absl::StrCat("expected a boolean, found ", it->type_name()));
  }
  return it->get<bool>();
}

absl::StatusOr<int64_t> GetInt(const Json& object, std::string_view key,
                               std::string_view path) {
  absl::StatusOr<const Json*> field = RequiredField(object, key, path);
  if (!field.ok()) return field.status();
  if (!(*field)->is_number_integer()) {
    return JsonError(
        FieldPath(path, key),
        absl::StrCat("expected an integer, found ", (*field)->type_name()));
  }
  if ((*field)->is_number_unsigned()) {
    const uint64_t value = (*field)->get<uint64_t>();
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return JsonError(FieldPath(path, key), "integer out of range");
    }
    return static_cast<int64_t>(value);
  }
  return (*field)->get<int64_t>();
}

absl::StatusOr<int32_t> AsTokenId(const Json& value, std::string_view path) {
  if (!value.is_number_integer()) {
    return JsonError(
        path, absl::StrCat("expected a token id, found ", value.type_name()));
  }
  const bool in_range =
      value.is_number_unsigned()
          ? value.get<uint64_t>() <=
                static_cast<uint64_t>(std::numeric_limits<int32_t>::max())
          : value.get<int64_t>() >= 0 &&
                value.get<int64_t>() <= std::numeric_limits<int32_t>::max();
  if (!in_range) {
    return JsonError(
        path, absl::StrCat("token id ", value.dump(), " is outside [0, 2^31)"));
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

}  // namespace prefopt::tokenizer
