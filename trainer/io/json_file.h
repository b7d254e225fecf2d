#ifndef PREFOPT_TRAINER_IO_JSON_FILE_H_
#define PREFOPT_TRAINER_IO_JSON_FILE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace prefopt::io {

// Reads and parses a JSON file. A missing file is NotFound; a parse error is
// InvalidArgument naming the file and the line:column where parsing failed.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// Parses `text` as JSON; `file` names the source in error messages, which give
// the line:column of a parse error. Nesting deeper than kMaxJsonDepth is an
// error too (code that walks a parsed value recurses), and so is a number out
// of range (1e400).
absl::StatusOr<nlohmann::json> ParseJson(std::string_view text,
                                         std::string_view file);

// How deeply arrays and objects may nest in any JSON prefopt reads; real
// configs, tokenizers and chat data need a handful of levels.
inline constexpr int kMaxJsonDepth = 256;

// InvalidArgument naming `where` and the line:column where `text` nests
// arrays/objects deeper than kMaxJsonDepth or holds a NUL byte (which the
// parser would take for the end of the input, accepting a safetensors header
// padded with NULs); OK otherwise (also for invalid JSON, which the parser
// reports). For one line of a JSONL file, `where` is
// "file:line" and the message gives only the column.
absl::Status CheckJsonDepth(std::string_view text, std::string_view where,
                            bool jsonl_line = false);

// Writes `value` as JSON indented by 2 spaces with a final newline, replacing
// `path` atomically (see AtomicFileWriter).
absl::Status WriteJsonFile(const std::string& path,
                           const nlohmann::json& value);

// Typed access to the field `field` of the JSON object `object` read from
// `file`. The plain getters fail when the field is absent, null or of another
// type; errors name the file and the field and say what was found. GetInt
// accepts integers that fit in int64_t; GetFloat accepts any number.
absl::StatusOr<int64_t> GetInt(const nlohmann::json& object,
                               std::string_view field, std::string_view file);
absl::StatusOr<double> GetFloat(const nlohmann::json& object,
                                std::string_view field, std::string_view file);
absl::StatusOr<std::string> GetString(const nlohmann::json& object,
                                      std::string_view field,
                                      std::string_view file);
absl::StatusOr<bool> GetBool(const nlohmann::json& object,
                             std::string_view field, std::string_view file);

// Like the getters above, but return `default_value` when the field is absent
// or null. A present field of another type is still an error.
absl::StatusOr<int64_t> GetIntOr(const nlohmann::json& object,
                                 std::string_view field, std::string_view file,
                                 int64_t default_value);
absl::StatusOr<double> GetFloatOr(const nlohmann::json& object,
                                  std::string_view field, std::string_view file,
                                  double default_value);
absl::StatusOr<std::string> GetStringOr(const nlohmann::json& object,
                                        std::string_view field,
                                        std::string_view file,
                                        std::string_view default_value);
absl::StatusOr<bool> GetBoolOr(const nlohmann::json& object,
                               std::string_view field, std::string_view file,
                               bool default_value);

// True when `object` is an object holding `field` with a non-null value.
bool HasNonNull(const nlohmann::json& object, std::string_view field);

// A short description of a JSON value for error messages: its type and, for
// scalars, its value (strings quoted, long texts shortened).
std::string DescribeJson(const nlohmann::json& value);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_JSON_FILE_H_
