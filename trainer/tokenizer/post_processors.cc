#include "trainer/tokenizer/post_processors.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kSupported[] = "TemplateProcessing, ByteLevel, Sequence";

absl::StatusOr<SpecialTokenTemplate> ParseTemplateProcessing(
    const Json& json, std::string_view path) {
  absl::StatusOr<const Json*> single = RequiredField(json, "single", path);
  if (!single.ok()) return single.status();
  const std::string single_path = FieldPath(path, "single");
  if (!(*single)->is_array())
    return JsonError(single_path, "expected an array");
  absl::StatusOr<const Json*> specials =
      RequiredField(json, "special_tokens", path);
  if (!specials.ok()) return specials.status();
  const std::string specials_path = FieldPath(path, "special_tokens");
  if (!(*specials)->is_object()) {
    return JsonError(specials_path, "expected an object");
  }

  SpecialTokenTemplate result;
  int sequences = 0;
  for (size_t i = 0; i < (*single)->size(); ++i) {
    const Json& piece = (**single)[i];
    const std::string piece_path = IndexPath(single_path, i);
    if (!piece.is_object() || piece.size() != 1) {
      return JsonError(
          piece_path,
          "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    }
    const std::string& kind = piece.begin().key();
    const Json& body = piece.begin().value();
    const std::string body_path = FieldPath(piece_path, kind);
    absl::StatusOr<std::string> name = GetString(body, "id", body_path);
    if (!name.ok()) return name.status();
    if (kind == "Sequence") {
      if (*name != "A") {
        return JsonError(FieldPath(body_path, "id"),
                         absl::StrCat("a single-sequence template can only "
                                      "hold sequence A, found \"",
                                      *name, "\""));
      }
      ++sequences;
      continue;
    }
    if (kind != "SpecialToken") {
      return JsonError(piece_path,
                       absl::StrCat("unknown template piece \"", kind, "\""));
    }
    const auto special = (*specials)->find(*name);
    if (special == (*specials)->end()) {
      return JsonError(specials_path,
                       absl::StrCat("missing special token \"", *name,
                                    "\" used by the template"));
    }
    const std::string special_path = FieldPath(specials_path, *name);
    absl::StatusOr<const Json*> ids =
        RequiredField(*special, "ids", special_path);
    if (!ids.ok()) return ids.status();
    if (!(*ids)->is_array()) {
      return JsonError(FieldPath(special_path, "ids"), "expected an array");
    }
    std::vector<int32_t>& target =
        sequences == 0 ? result.prefix : result.suffix;
    for (size_t j = 0; j < (*ids)->size(); ++j) {
      absl::StatusOr<int32_t> id =
          AsTokenId((**ids)[j], IndexPath(FieldPath(special_path, "ids"), j));
      if (!id.ok()) return id.status();
      target.push_back(*id);
      result.named_ids.emplace_back(*name, *id);
    }
  }
  if (sequences != 1) {
    return JsonError(single_path,
                     absl::StrCat("the template must hold $A exactly once, "
                                  "found it ",
                                  sequences, " times"));
  }
  return result;
}

}  // namespace

absl::StatusOr<SpecialTokenTemplate> ParsePostProcessor(const Json& json,
                                                        std::string_view path) {
  if (json.is_null()) return SpecialTokenTemplate();
  absl::StatusOr<std::string> type = ComponentType(json, path);
  if (!type.ok()) return type.status();
  if (*type == "TemplateProcessing") return ParseTemplateProcessing(json, path);
  if (*type == "ByteLevel") return SpecialTokenTemplate();
  if (*type == "Sequence") {
    absl::StatusOr<const Json*> list = RequiredField(json, "processors", path);
    if (!list.ok()) return list.status();
    const std::string list_path = FieldPath(path, "processors");
    if (!(*list)->is_array()) return JsonError(list_path, "expected an array");
    // Each processor wraps what the previous ones produced.
    SpecialTokenTemplate result;
    for (size_t i = 0; i < (*list)->size(); ++i) {
      absl::StatusOr<SpecialTokenTemplate> step =
          ParsePostProcessor((**list)[i], IndexPath(list_path, i));
      if (!step.ok()) return step.status();
      step->prefix.insert(step->prefix.end(), result.prefix.begin(),
                          result.prefix.end());
      result.prefix = std::move(step->prefix);
      result.suffix.insert(result.suffix.end(), step->suffix.begin(),
                           step->suffix.end());
      result.named_ids.insert(result.named_ids.end(), step->named_ids.begin(),
                              step->named_ids.end());
    }
    return result;
  }
  return UnsupportedType(path, "post_processor", *type, kSupported);
}

}  // namespace prefopt::tokenizer
