#include "trainer/tokenizer/pattern.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace prefopt::tokenizer {

absl::StatusOr<Pattern> Pattern::FromJson(const Json& json,
                                          std::string_view path) {
  if (!json.is_object() || json.size() != 1) {
    return JsonError(path, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  const std::string& kind = json.begin().key();
  const Json& value = json.begin().value();
  if (!value.is_string()) {
    return JsonError(FieldPath(path, kind), "expected a string");
  }
  const std::string text = value.get<std::string>();
  if (text.empty()) {
    return JsonError(FieldPath(path, kind), "empty patterns are not supported");
  }
  if (kind == "String") return Pattern(text);
  if (kind == "Regex") {
    absl::StatusOr<Regex> regex = Regex::Compile(text);
    if (!regex.ok()) {
      return JsonError(FieldPath(path, kind),
                       StdView(regex.status().message()));
    }
    return Pattern(*std::move(regex));
  }
  return JsonError(path, absl::StrCat("unknown pattern kind \"", kind,
                                      "\" (expected String or Regex)"));
}

absl::Status Pattern::FindMatches(std::string_view text,
                                  std::vector<ByteRange>* matches) const {
  if (regex_.has_value()) return regex_->FindAll(text, matches);
  size_t from = 0;
  while (true) {
    const size_t found = text.find(literal_, from);
    if (found == std::string_view::npos) break;
    matches->emplace_back(found, found + literal_.size());
    from = found + literal_.size();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Pattern::ReplaceAll(
    std::string_view text, std::string_view content) const {
  std::vector<ByteRange> matches;
  absl::Status status = FindMatches(text, &matches);
  if (!status.ok()) return status;
  std::string out;
  out.reserve(text.size());
  size_t last = 0;
  for (const ByteRange& m : matches) {
    out.append(text.substr(last, m.first - last));
    out.append(content);
    last = m.second;
  }
  out.append(text.substr(last));
  return out;
}

}  // namespace prefopt::tokenizer
