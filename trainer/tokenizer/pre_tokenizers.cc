#include "trainer/tokenizer/pre_tokenizers.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/byte_level.h"
#include "trainer/tokenizer/pattern.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kSupported[] = "ByteLevel, Split, Digits, Metaspace, Sequence";

// GPT-2's word regex, which ByteLevel uses when use_regex is true.
constexpr char kGpt2Regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

enum class Behavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous,
};

struct Segment {
  size_t begin;
  size_t end;
  bool is_match;
};

// Cuts [0, length) at `matches` into the pieces `behavior` asks for, as
// tokenizers' NormalizedString::split does, and appends the non-empty ones,
// shifted by `offset`, to `out`.
void SplitAtMatches(size_t offset, size_t length,
                    const std::vector<ByteRange>& matches, Behavior behavior,
                    bool invert, std::vector<ByteRange>* out) {
  std::vector<Segment> segments;
  segments.reserve(2 * matches.size() + 1);
  size_t previous = 0;
  for (const ByteRange& m : matches) {
    if (previous != m.first) segments.push_back({previous, m.first, invert});
    segments.push_back({m.first, m.second, !invert});
    previous = m.second;
  }
  if (previous != length) segments.push_back({previous, length, invert});

  std::vector<Segment> kept;
  kept.reserve(segments.size());
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kIsolated:
      kept = std::move(segments);
      break;
    case Behavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.is_match) kept.push_back(s);
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !kept.empty()) {
          kept.back().end = s.end;
        } else {
          kept.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    case Behavior::kContiguous:
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !kept.empty()) {
          kept.back().end = s.end;
        } else {
          kept.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
  }
  for (const Segment& s : kept) {
    if (s.begin != s.end) out->emplace_back(offset + s.begin, offset + s.end);
  }
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  absl::Status PreTokenize(Pieces* pieces) const override {
    std::vector<ByteRange> ranges;
    ranges.reserve(pieces->ranges.size());
    std::vector<ByteRange> matches;
    for (const ByteRange& range : pieces->ranges) {
      matches.clear();
      absl::Status status = pattern_.FindMatches(pieces->Get(range), &matches);
      if (!status.ok()) return status;
      SplitAtMatches(range.first, range.second - range.first, matches,
                     behavior_, invert_, &ranges);
    }
    pieces->ranges = std::move(ranges);
    return absl::OkStatus();
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  absl::Status PreTokenize(Pieces* pieces) const override {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
    Pieces mapped;
    mapped.text.reserve(pieces->text.size() + pieces->text.size() / 2);
    std::string prefixed;
    std::vector<ByteRange> matches;
    const auto append = [&](std::string_view word) {
      const size_t begin = mapped.text.size();
      alphabet.Map(word, &mapped.text);
      mapped.ranges.emplace_back(begin, mapped.text.size());
    };
    for (const ByteRange& range : pieces->ranges) {
      std::string_view piece = pieces->Get(range);
      if (add_prefix_space_ && piece.front() != ' ') {
        prefixed.assign(" ");
        prefixed.append(piece);
        piece = prefixed;
      }
      if (!regex_.has_value()) {
        append(piece);
        continue;
      }
      matches.clear();
      absl::Status status = regex_->FindAll(piece, &matches);
      if (!status.ok()) return status;
      size_t previous = 0;
      for (const ByteRange& m : matches) {
        if (previous < m.first) {
          append(piece.substr(previous, m.first - previous));
        }
        if (m.first < m.second) {
          append(piece.substr(m.first, m.second - m.first));
        }
        previous = m.second;
      }
      if (previous < piece.size()) append(piece.substr(previous));
    }
    *pieces = std::move(mapped);
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

// SentencePiece's word boundaries: every space becomes `replacement`, which
// is also put before a piece that does not start with it (every piece, or
// only the one at the start of the input, or none), and with `split` the
// piece is cut before every `replacement`.
class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme,
                        bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}

  absl::Status PreTokenize(Pieces* pieces) const override {
    Pieces out;
    out.at_input_start = pieces->at_input_start;
    out.text.reserve(pieces->text.size() + pieces->text.size() / 4 +
                     replacement_.size() * pieces->ranges.size());
    for (const ByteRange& range : pieces->ranges) {
      const std::string_view piece = pieces->Get(range);
      const size_t begin = out.text.size();
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst &&
                            pieces->at_input_start && range.first == 0);
      const bool starts_with_replacement =
          piece.substr(0, replacement_.size()) == replacement_ ||
          (piece.front() == ' ');
      if (prepend && !starts_with_replacement) out.text.append(replacement_);
      for (const char c : piece) {
        if (c == ' ') {
          out.text.append(replacement_);
        } else {
          out.text.push_back(c);
        }
      }
      const size_t end = out.text.size();
      if (!split_) {
        out.ranges.emplace_back(begin, end);
        continue;
      }
      // Cut before every replacement (tokenizers' MergedWithNext split).
      size_t word_begin = begin;
      size_t at = out.text.find(replacement_, begin);
      while (at != std::string::npos && at < end) {
        if (at > word_begin) out.ranges.emplace_back(word_begin, at);
        word_begin = at;
        at = out.text.find(replacement_, at + replacement_.size());
      }
      if (end > word_begin) out.ranges.emplace_back(word_begin, end);
    }
    *pieces = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(
      std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}

  absl::Status PreTokenize(Pieces* pieces) const override {
    for (const auto& step : steps_) {
      absl::Status status = step->PreTokenize(pieces);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::StatusOr<Behavior> ParseBehavior(const Json& json,
                                       std::string_view path) {
  absl::StatusOr<std::string> name = GetString(json, "behavior", path);
  if (!name.ok()) return name.status();
  if (*name == "Removed") return Behavior::kRemoved;
  if (*name == "Isolated") return Behavior::kIsolated;
  if (*name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (*name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (*name == "Contiguous") return Behavior::kContiguous;
  return JsonError(FieldPath(path, "behavior"),
                   absl::StrCat("unknown behavior \"", *name,
                                "\" (expected Removed, Isolated, "
                                "MergedWithPrevious, MergedWithNext or "
                                "Contiguous)"));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseSplit(
    const Json& json, std::string_view path) {
  absl::StatusOr<const Json*> pattern_json =
      RequiredField(json, "pattern", path);
  if (!pattern_json.ok()) return pattern_json.status();
  absl::StatusOr<Pattern> pattern =
      Pattern::FromJson(**pattern_json, FieldPath(path, "pattern"));
  if (!pattern.ok()) return pattern.status();
  absl::StatusOr<Behavior> behavior = ParseBehavior(json, path);
  if (!behavior.ok()) return behavior.status();
  absl::StatusOr<bool> invert = GetBool(json, "invert", path, false);
  if (!invert.ok()) return invert.status();
  return std::make_unique<SplitPreTokenizer>(*std::move(pattern), *behavior,
                                             *invert);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseByteLevel(
    const Json& json, std::string_view path) {
  // tokenizers requires add_prefix_space; use_regex defaults to true.
  if (!json.contains("add_prefix_space")) {
    return JsonError(FieldPath(path, "add_prefix_space"), "missing field");
  }
  absl::StatusOr<bool> add_prefix_space =
      GetBool(json, "add_prefix_space", path, false);
  if (!add_prefix_space.ok()) return add_prefix_space.status();
  absl::StatusOr<bool> use_regex = GetBool(json, "use_regex", path, true);
  if (!use_regex.ok()) return use_regex.status();
  std::optional<Regex> regex;
  if (*use_regex) {
    absl::StatusOr<Regex> compiled = Regex::Compile(kGpt2Regex);
    if (!compiled.ok()) return compiled.status();
    regex = *std::move(compiled);
  }
  return std::make_unique<ByteLevelPreTokenizer>(*add_prefix_space,
                                                 std::move(regex));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseDigits(
    const Json& json, std::string_view path) {
  absl::StatusOr<bool> individual =
      GetBool(json, "individual_digits", path, false);
  if (!individual.ok()) return individual.status();
  absl::StatusOr<Regex> numeric = Regex::RustNumeric();
  if (!numeric.ok()) return numeric.status();
  return std::make_unique<SplitPreTokenizer>(
      Pattern(*std::move(numeric)),
      *individual ? Behavior::kIsolated : Behavior::kContiguous,
      /*invert=*/false);
}

}  // namespace

absl::StatusOr<MetaspaceSettings> ParseMetaspaceSettings(
    const Json& json, std::string_view path) {
  MetaspaceSettings settings;
  absl::StatusOr<std::string> replacement =
      GetString(json, "replacement", path);
  if (!replacement.ok()) return replacement.status();
  if (replacement->empty() ||
      ValidUtf8Prefix(*replacement) != replacement->size() ||
      Utf8CharLength((*replacement)[0]) != replacement->size()) {
    return JsonError(FieldPath(path, "replacement"), "expected one character");
  }
  settings.replacement = *std::move(replacement);
  absl::StatusOr<std::optional<std::string>> scheme =
      GetOptionalString(json, "prepend_scheme", path);
  if (!scheme.ok()) return scheme.status();
  if (!scheme->has_value() || **scheme == "always") {
    settings.prepend_scheme = PrependScheme::kAlways;
  } else if (**scheme == "never") {
    settings.prepend_scheme = PrependScheme::kNever;
  } else if (**scheme == "first") {
    settings.prepend_scheme = PrependScheme::kFirst;
  } else {
    return JsonError(FieldPath(path, "prepend_scheme"),
                     absl::StrCat("unknown prepend_scheme \"", **scheme,
                                  "\" (expected always, never or first)"));
  }
  absl::StatusOr<bool> add_prefix_space =
      GetBool(json, "add_prefix_space", path, true);
  if (!add_prefix_space.ok()) return add_prefix_space.status();
  if (!*add_prefix_space && settings.prepend_scheme != PrependScheme::kNever) {
    return JsonError(FieldPath(path, "add_prefix_space"),
                     "false needs prepend_scheme \"never\" (tokenizers "
                     "refuses the file otherwise)");
  }
  absl::StatusOr<bool> split = GetBool(json, "split", path, true);
  if (!split.ok()) return split.status();
  settings.split = *split;
  return settings;
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const Json& json, std::string_view path) {
  if (json.is_null()) return nullptr;
  absl::StatusOr<std::string> type = ComponentType(json, path);
  if (!type.ok()) return type.status();
  if (*type == "ByteLevel") return ParseByteLevel(json, path);
  if (*type == "Split") return ParseSplit(json, path);
  if (*type == "Digits") return ParseDigits(json, path);
  if (*type == "Metaspace") {
    absl::StatusOr<MetaspaceSettings> settings =
        ParseMetaspaceSettings(json, path);
    if (!settings.ok()) return settings.status();
    return std::make_unique<MetaspacePreTokenizer>(
        std::move(settings->replacement), settings->prepend_scheme,
        settings->split);
  }
  if (*type == "Sequence") {
    absl::StatusOr<const Json*> list =
        RequiredField(json, "pretokenizers", path);
    if (!list.ok()) return list.status();
    const std::string list_path = FieldPath(path, "pretokenizers");
    if (!(*list)->is_array()) return JsonError(list_path, "expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < (*list)->size(); ++i) {
      const std::string step_path = IndexPath(list_path, i);
      if ((**list)[i].is_null()) {
        return JsonError(step_path, "null pre-tokenizer");
      }
      absl::StatusOr<std::unique_ptr<PreTokenizer>> step =
          ParsePreTokenizer((**list)[i], step_path);
      if (!step.ok()) return step.status();
      steps.push_back(*std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  return UnsupportedType(path, "pre_tokenizer", *type, kSupported);
}

}  // namespace prefopt::tokenizer
