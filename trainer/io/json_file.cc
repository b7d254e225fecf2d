#include "trainer/io/json_file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "trainer/io/atomic_file.h"
#include "trainer/io/string_view_compat.h"
#include "trainer/util/input_file.h"

namespace prefopt::io {
namespace {

using nlohmann::json;

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  if (absl::Status s = util::CheckInputFile(path); !s.ok()) return s;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(
        err == ENOENT ? absl::StatusCode::kNotFound
                      : absl::StatusCode::kPermissionDenied,
        absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  std::string contents;
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      close(fd);
      return absl::DataLossError(
          absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
    }
    contents.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return contents;
}

// Line and column (both 1-based) of the byte at 0-based `offset` in `text`.
std::pair<size_t, size_t> LineAndColumn(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, offset - line_start + 1};
}

// The explanation part of an nlohmann exception message, without its
// "[json.exception...] parse error at line L, column C: " prefix.
std::string_view ExceptionDetail(const char* what) {
  std::string_view message(what);
  const size_t colon = message.find(": ");
  if (colon == std::string_view::npos) return message;
  return message.substr(colon + 2);
}

// Finds `field` in `object`; null when absent. Errors when `object` is not a
// JSON object.
absl::StatusOr<const json*> FindField(const json& object,
                                      std::string_view field,
                                      std::string_view file) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(file), ": expected a JSON object holding field '",
                     AbslView(field), "', found ", DescribeJson(object)));
  }
  const auto it = object.find(std::string(field));
  if (it == object.end()) return nullptr;
  return &*it;
}

absl::StatusOr<const json*> FindRequired(const json& object,
                                         std::string_view field,
                                         std::string_view file) {
  absl::StatusOr<const json*> value = FindField(object, field, file);
  if (!value.ok()) return value.status();
  if (*value == nullptr || (*value)->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(
        AbslView(file), ": missing required field '", AbslView(field), "'"));
  }
  return value;
}

absl::Status WrongType(std::string_view file, std::string_view field,
                       std::string_view expected, const json& found) {
  return absl::InvalidArgumentError(
      absl::StrCat(AbslView(file), ": field '", AbslView(field), "' must be ",
                   AbslView(expected), ", found ", DescribeJson(found)));
}

absl::StatusOr<int64_t> AsInt(const json& value, std::string_view field,
                              std::string_view file) {
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return WrongType(file, field, "an integer that fits in 64 bits", value);
    }
    return static_cast<int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  return WrongType(file, field, "an integer", value);
}

absl::StatusOr<double> AsFloat(const json& value, std::string_view field,
                               std::string_view file) {
  if (!value.is_number()) return WrongType(file, field, "a number", value);
  return value.get<double>();
}

absl::StatusOr<std::string> AsString(const json& value, std::string_view field,
                                     std::string_view file) {
  if (!value.is_string()) return WrongType(file, field, "a string", value);
  return value.get<std::string>();
}

absl::StatusOr<bool> AsBool(const json& value, std::string_view field,
                            std::string_view file) {
  if (!value.is_boolean()) {
    return WrongType(file, field, "true or false", value);
  }
  return value.get<bool>();
}

}  // namespace

absl::Status CheckJsonDepth(std::string_view text, std::string_view where,
                            bool jsonl_line) {
  // "where:line:column: problem" (a JSONL line: "where:column C: ...").
  const auto error_at = [&](size_t i, std::string_view problem) {
    const auto [line, column] = LineAndColumn(text, i);
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(where), ":",
                     jsonl_line ? absl::StrCat("column ", column)
                                : absl::StrCat(line, ":", column),
                     ": ", AbslView(problem)));
  };
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\0') {
      // nlohmann's parser takes a NUL byte for the end of the input and
      // ignores what follows; JSON has no place for one.
      return error_at(i,
                      "NUL byte in JSON text (only spaces, tabs and newlines "
                      "may pad it)");
    }
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return error_at(i, absl::StrCat("JSON nested deeper than ",
                                        kMaxJsonDepth, " levels"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view file) {
  if (absl::Status s = CheckJsonDepth(text, file); !s.ok()) return s;
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based index of the byte at which parsing failed.
    const auto [line, column] =
        LineAndColumn(text, e.byte == 0 ? 0 : e.byte - 1);
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(file), ":", line, ":", column,
                     ": invalid JSON: ", AbslView(ExceptionDetail(e.what()))));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(file),
                     ": invalid JSON: ", AbslView(ExceptionDetail(e.what()))));
  }
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  return ParseJson(*text, path);
}

absl::Status WriteJsonFile(const std::string& path, const json& value) {
  std::string text;
  try {
    text = value.dump(2);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write ", path, ": ", AbslView(ExceptionDetail(e.what()))));
  }
  text.push_back('\n');
  return WriteFileAtomically(path, text);
}

bool HasNonNull(const json& object, std::string_view field) {
  if (!object.is_object()) return false;
  const auto it = object.find(std::string(field));
  return it != object.end() && !it->is_null();
}

std::string DescribeJson(const json& value) {
  // Replaces invalid UTF-8 (a string cut mid-character) instead of throwing.
  const auto dump = [](const json& v) {
    return v.dump(-1, ' ', false, json::error_handler_t::replace);
  };
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string: {
      const std::string& s = value.get_ref<const std::string&>();
      constexpr size_t kMaxShown = 60;
      if (s.size() <= kMaxShown)
        return absl::StrCat("the string ", dump(value));
      return absl::StrCat("the string ", dump(json(s.substr(0, kMaxShown))),
                          "...");
    }
    case json::value_t::boolean:
      return value.get<bool>() ? "true" : "false";
    default:
      return absl::StrCat("the number ", dump(value));
  }
}

absl::StatusOr<int64_t> GetInt(const json& object, std::string_view field,
                               std::string_view file) {
  absl::StatusOr<const json*> value = FindRequired(object, field, file);
  if (!value.ok()) return value.status();
  return AsInt(**value, field, file);
}

absl::StatusOr<double> GetFloat(const json& object, std::string_view field,
                                std::string_view file) {
  absl::StatusOr<const json*> value = FindRequired(object, field, file);
  if (!value.ok()) return value.status();
  return AsFloat(**value, field, file);
}

absl::StatusOr<std::string> GetString(const json& object,
                                      std::string_view field,
                                      std::string_view file) {
  absl::StatusOr<const json*> value = FindRequired(object, field, file);
  if (!value.ok()) return value.status();
  return AsString(**value, field, file);
}

absl::StatusOr<bool> GetBool(const json& object, std::string_view field,
                             std::string_view file) {
  absl::StatusOr<const json*> value = FindRequired(object, field, file);
  if (!value.ok()) return value.status();
  return AsBool(**value, field, file);
}

absl::StatusOr<int64_t> GetIntOr(const json& object, std::string_view field,
                                 std::string_view file, int64_t default_value) {
  absl::StatusOr<const json*> value = FindField(object, field, file);
  if (!value.ok()) return value.status();
  if (*value == nullptr || (*value)->is_null()) return default_value;
  return AsInt(**value, field, file);
}

absl::StatusOr<double> GetFloatOr(const json& object, std::string_view field,
                                  std::string_view file, double default_value) {
  absl::StatusOr<const json*> value = FindField(object, field, file);
  if (!value.ok()) return value.status();
  if (*value == nullptr || (*value)->is_null()) return default_value;
  return AsFloat(**value, field, file);
}

absl::StatusOr<std::string> GetStringOr(const json& object,
                                        std::string_view field,
                                        std::string_view file,
                                        std::string_view default_value) {
  absl::StatusOr<const json*> value = FindField(object, field, file);
  if (!value.ok()) return value.status();
  if (*value == nullptr || (*value)->is_null()) {
    return std::string(default_value);
  }
  return AsString(**value, field, file);
}

absl::StatusOr<bool> GetBoolOr(const json& object, std::string_view field,
                               std::string_view file, bool default_value) {
  absl::StatusOr<const json*> value = FindField(object, field, file);
  if (!value.ok()) return value.status();
  if (*value == nullptr || (*value)->is_null()) return default_value;
  return AsBool(**value, field, file);
}

}  // namespace prefopt::io
