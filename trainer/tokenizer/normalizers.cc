#include "trainer/tokenizer/normalizers.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/pattern.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kSupported[] = "Sequence, Prepend, Replace";

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}

  absl::Status Normalize(std::string* text) const override {
    for (const auto& step : steps_) {
      absl::Status status = step->Normalize(text);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}

  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}

  absl::Status Normalize(std::string* text) const override {
    absl::StatusOr<std::string> replaced = pattern_.ReplaceAll(*text, content_);
    if (!replaced.ok()) return replaced.status();
    *text = *std::move(replaced);
    return absl::OkStatus();
  }

 private:
  Pattern pattern_;
  std::string content_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const Json& json, std::string_view path) {
  if (json.is_null()) return nullptr;
  absl::StatusOr<std::string> type = ComponentType(json, path);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
    absl::StatusOr<const Json*> list = RequiredField(json, "normalizers", path);
    if (!list.ok()) return list.status();
    const std::string list_path = FieldPath(path, "normalizers");
    if (!(*list)->is_array()) return JsonError(list_path, "expected an array");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < (*list)->size(); ++i) {
      const std::string step_path = IndexPath(list_path, i);
      if ((**list)[i].is_null()) return JsonError(step_path, "null normalizer");
      absl::StatusOr<std::unique_ptr<Normalizer>> step =
          ParseNormalizer((**list)[i], step_path);
      if (!step.ok()) return step.status();
      steps.push_back(*std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (*type == "Prepend") {
    absl::StatusOr<std::string> prefix = GetString(json, "prepend", path);
    if (!prefix.ok()) return prefix.status();
    return std::make_unique<PrependNormalizer>(*std::move(prefix));
  }
  if (*type == "Replace") {
    absl::StatusOr<const Json*> pattern_json =
        RequiredField(json, "pattern", path);
    if (!pattern_json.ok()) return pattern_json.status();
    absl::StatusOr<Pattern> pattern =
        Pattern::FromJson(**pattern_json, FieldPath(path, "pattern"));
    if (!pattern.ok()) return pattern.status();
    absl::StatusOr<std::string> content = GetString(json, "content", path);
    if (!content.ok()) return content.status();
    return std::make_unique<ReplaceNormalizer>(*std::move(pattern),
                                               *std::move(content));
  }
  if (*type == "NFC" || *type == "NFD" || *type == "NFKC" || *type == "NFKD") {
    return JsonError(
        path, absl::StrCat("normalizer type \"", *type,
                           "\" is not supported: Unicode normalization is "
                           "not implemented (supported: ",
                           kSupported, ")"));
  }
  return UnsupportedType(path, "normalizer", *type, kSupported);
}

}  // namespace prefopt::tokenizer
