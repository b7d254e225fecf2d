#include "trainer/tokenizer/normalizers.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uniset.h>
#include <unicode/utypes.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/pattern.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kSupported[] =
    "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD";

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

// The Unicode version of the normalization tables of `tokenizers` (0.22): the
// unicode-normalization-alignments crate it uses was forked from
// unicode-normalization when that had Unicode 9.0 data. Characters assigned
// later have no decomposition and combining class 0 there, so they are left
// as they are and end any reordering or composition, even where Unicode
// since gave them a mapping (U+11938 = U+11935 U+11930, Unicode 13) or a
// combining class (U+1DF6, Unicode 10).
constexpr char kTokenizersUnicodeSet[] = "[:age=9.0:]";

// The characters of kTokenizersUnicodeSet; built once, frozen (so that
// concurrent reads are safe) and never freed.
absl::StatusOr<const icu::UnicodeSet*> TokenizersCharacters() {
  static const icu::UnicodeSet* const set = [] {
    UErrorCode status = U_ZERO_ERROR;
    auto* chars = new icu::UnicodeSet(
        icu::UnicodeString(kTokenizersUnicodeSet, -1, US_INV), status);
    if (U_FAILURE(status)) {
      delete chars;
      return static_cast<icu::UnicodeSet*>(nullptr);
    }
    chars->freeze();
    return chars;
  }();
  if (set == nullptr) {
    return absl::InternalError(
        absl::StrCat("ICU cannot build the character set ",
                     kTokenizersUnicodeSet, " (is its data library present?)"));
  }
  return set;
}

// NFC, NFD, NFKC and NFKD with ICU's Normalizer2, restricted to the
// characters `tokenizers` knows (see kTokenizersUnicodeSet): ICU's
// FilteredNormalizer2 normalizes the runs of those characters and leaves the
// others unchanged, which is what the older tables do to them.
class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(std::unique_ptr<icu::Normalizer2> normalizer)
      : normalizer_(std::move(normalizer)) {}

  absl::Status Normalize(std::string* text) const override {
    // Every normalization form maps ASCII to itself; most text is ASCII.
    bool ascii = true;
    for (const char c : *text) {
      if (static_cast<unsigned char>(c) >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return absl::OkStatus();
    std::string out;
    out.reserve(text->size() + text->size() / 8);
    icu::StringByteSink<std::string> sink(&out);
    UErrorCode status = U_ZERO_ERROR;
    normalizer_->normalizeUTF8(
        0, icu::StringPiece(text->data(), static_cast<int32_t>(text->size())),
        sink, nullptr, status);
    if (U_FAILURE(status)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Unicode normalization failed: ", u_errorName(status)));
    }
    *text = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<icu::Normalizer2> normalizer_;
};

absl::StatusOr<std::unique_ptr<Normalizer>> MakeUnicodeNormalizer(
    const std::string& type, std::string_view path) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* base = nullptr;
  if (type == "NFC") {
    base = icu::Normalizer2::getNFCInstance(status);
  } else if (type == "NFD") {
    base = icu::Normalizer2::getNFDInstance(status);
  } else if (type == "NFKC") {
    base = icu::Normalizer2::getNFKCInstance(status);
  } else {
    base = icu::Normalizer2::getNFKDInstance(status);
  }
  if (U_FAILURE(status)) {
    return JsonError(path, absl::StrCat("ICU cannot provide the ", type,
                                        " normalizer: ", u_errorName(status)));
  }
  absl::StatusOr<const icu::UnicodeSet*> chars = TokenizersCharacters();
  if (!chars.ok()) return chars.status();
  return std::make_unique<UnicodeNormalizer>(
      std::make_unique<icu::FilteredNormalizer2>(*base, **chars));
}

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
    return MakeUnicodeNormalizer(*type, path);
  }
  return UnsupportedType(path, "normalizer", *type, kSupported);
}

}  // namespace prefopt::tokenizer
