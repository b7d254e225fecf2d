#include "trainer/tokenizer/decoders.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/byte_level.h"
#include "trainer/tokenizer/pattern.h"
#include "trainer/tokenizer/pre_tokenizers.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kSupported[] =
    "ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence";
constexpr char kReplacementChar[] = "\xEF\xBF\xBD";

// Maps every character back to its byte (a token with any other character
// contributes its UTF-8 bytes unchanged) and joins everything into one text.
class ByteLevelDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
    std::string bytes;
    std::string token_bytes;
    for (const std::string& token : *tokens) {
      token_bytes.clear();
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size();
           pos += Utf8CharLength(token[pos])) {
        const int byte = alphabet.ByteOf(DecodeUtf8(token, pos));
        if (byte < 0) {
          all_mapped = false;
          break;
        }
        token_bytes.push_back(static_cast<char>(byte));
      }
      bytes.append(all_mapped ? token_bytes : token);
    }
    tokens->assign(1, Utf8Lossy(bytes));
    return absl::OkStatus();
  }
};

// Turns runs of <0xXX> tokens into the text their bytes spell, or one U+FFFD
// per byte when the run is not valid UTF-8.
class ByteFallbackDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string run;
    const auto flush = [&] {
      if (run.empty()) return;
      if (ValidUtf8Prefix(run) == run.size()) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run.size(); ++i) out.push_back(kReplacementChar);
      }
      run.clear();
    };
    for (std::string& token : *tokens) {
      const int byte = ParseByteToken(token);
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }

 private:
  static int HexDigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // The byte of a "<0xXX>" token, or -1.
  static int ParseByteToken(std::string_view token) {
    if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') {
      return -1;
    }
    const int high = HexDigit(token[3]);
    const int low = HexDigit(token[4]);
    return high < 0 || low < 0 ? -1 : high * 16 + low;
  }
};

class FuseDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string joined;
    for (const std::string& token : *tokens) joined += token;
    tokens->assign(1, std::move(joined));
    return absl::OkStatus();
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character
// from every token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}

  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      std::vector<size_t> offsets;  // byte offset of every character, and end
      for (size_t pos = 0; pos < token.size();
           pos += Utf8CharLength(token[pos])) {
        offsets.push_back(pos);
      }
      const size_t chars = offsets.size();
      offsets.push_back(token.size());
      size_t first = 0;
      while (first < std::min(start_, chars) &&
             DecodeUtf8(token, offsets[first]) == content_) {
        ++first;
      }
      size_t last = chars;
      for (size_t i = 0; i < std::min(stop_, chars - first); ++i) {
        if (DecodeUtf8(token, offsets[last - 1]) != content_) break;
        --last;
      }
      token = token.substr(offsets[first], offsets[last] - offsets[first]);
    }
    return absl::OkStatus();
  }

 private:
  char32_t content_;
  size_t start_;
  size_t stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}

  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      absl::StatusOr<std::string> replaced =
          pattern_.ReplaceAll(token, content_);
      if (!replaced.ok()) return replaced.status();
      token = *std::move(replaced);
    }
    return absl::OkStatus();
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Turns every `replacement` back into a space, except in the first token
// when the pre-tokenizer prepends one (there tokenizers drops them all).
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}

  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      const bool drop = i == 0 && scheme_ != PrependScheme::kNever;
      std::string out;
      out.reserve(token.size());
      size_t from = 0;
      for (size_t at = token.find(replacement_); at != std::string::npos;
           at = token.find(replacement_, from)) {
        out.append(token, from, at - from);
        if (!drop) out.push_back(' ');
        from = at + replacement_.size();
      }
      out.append(token, from, std::string::npos);
      token = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}

  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) {
      absl::Status status = step->DecodeChain(tokens);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

absl::StatusOr<std::unique_ptr<Decoder>> ParseStrip(const Json& json,
                                                    std::string_view path) {
  absl::StatusOr<std::string> content = GetString(json, "content", path);
  if (!content.ok()) return content.status();
  if (content->empty() || ValidUtf8Prefix(*content) != content->size() ||
      Utf8CharLength((*content)[0]) != content->size()) {
    return JsonError(FieldPath(path, "content"), "expected one character");
  }
  absl::StatusOr<int64_t> start = GetInt(json, "start", path);
  if (!start.ok()) return start.status();
  absl::StatusOr<int64_t> stop = GetInt(json, "stop", path);
  if (!stop.ok()) return stop.status();
  if (*start < 0 || *stop < 0) {
    return JsonError(path, "start and stop must not be negative");
  }
  return std::make_unique<StripDecoder>(DecodeUtf8(*content, 0),
                                        static_cast<size_t>(*start),
                                        static_cast<size_t>(*stop));
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseReplace(const Json& json,
                                                      std::string_view path) {
  absl::StatusOr<const Json*> pattern_json =
      RequiredField(json, "pattern", path);
  if (!pattern_json.ok()) return pattern_json.status();
  absl::StatusOr<Pattern> pattern =
      Pattern::FromJson(**pattern_json, FieldPath(path, "pattern"));
  if (!pattern.ok()) return pattern.status();
  absl::StatusOr<std::string> content = GetString(json, "content", path);
  if (!content.ok()) return content.status();
  return std::make_unique<ReplaceDecoder>(*std::move(pattern),
                                          *std::move(content));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& json,
                                                      std::string_view path) {
  if (json.is_null()) return nullptr;
  absl::StatusOr<std::string> type = ComponentType(json, path);
  if (!type.ok()) return type.status();
  if (*type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (*type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (*type == "Fuse") return std::make_unique<FuseDecoder>();
  if (*type == "Strip") return ParseStrip(json, path);
  if (*type == "Replace") return ParseReplace(json, path);
  if (*type == "Metaspace") {
    absl::StatusOr<MetaspaceSettings> settings =
        ParseMetaspaceSettings(json, path);
    if (!settings.ok()) return settings.status();
    return std::make_unique<MetaspaceDecoder>(std::move(settings->replacement),
                                              settings->prepend_scheme);
  }
  if (*type == "Sequence") {
    absl::StatusOr<const Json*> list = RequiredField(json, "decoders", path);
    if (!list.ok()) return list.status();
    const std::string list_path = FieldPath(path, "decoders");
    if (!(*list)->is_array()) return JsonError(list_path, "expected an array");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < (*list)->size(); ++i) {
      const std::string step_path = IndexPath(list_path, i);
      if ((**list)[i].is_null()) return JsonError(step_path, "null decoder");
      absl::StatusOr<std::unique_ptr<Decoder>> step =
          ParseDecoder((**list)[i], step_path);
      if (!step.ok()) return step.status();
      steps.push_back(*std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  return UnsupportedType(path, "decoder", *type, kSupported);
}

}  // namespace prefopt::tokenizer
