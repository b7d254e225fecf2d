#include "trainer/tokenizer/tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/io/json_file.h"
#include "trainer/tokenizer/added_vocabulary.h"
#include "trainer/tokenizer/bpe.h"
#include "trainer/tokenizer/decoders.h"
#include "trainer/tokenizer/json_util.h"
#include "trainer/tokenizer/normalizers.h"
#include "trainer/tokenizer/post_processors.h"
#include "trainer/tokenizer/pre_tokenizers.h"
#include "trainer/tokenizer/utf8.h"
#include "trainer/util/input_file.h"

namespace prefopt::tokenizer {

namespace {

// Everything read from a tokenizer.json.
struct Components {
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Decoder> decoder;
  AddedVocabulary added;
  SpecialTokenTemplate special_tokens;
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;

  // Normalizes, pre-tokenizes and tokenizes text that holds no raw-matched
  // added token; `at_input_start` says whether it begins the text given to
  // Encode.
  absl::Status EncodeText(std::string_view text, bool at_input_start,
                          std::vector<int32_t>* ids) const;
};

absl::Status WithSource(const absl::Status& status, std::string_view source) {
  return absl::Status(status.code(),
                      absl::StrCat(AbslView(source), ": ", status.message()));
}

const Json& FieldOrNull(const Json& root, std::string_view key) {
  static const Json* const null_json = new Json();
  const auto it = root.find(key);
  return it == root.end() ? *null_json : *it;
}

// The single special token a template puts on one side of $A, if any.
std::optional<int32_t> SingleId(const std::vector<int32_t>& ids) {
  if (ids.size() != 1) return std::nullopt;
  return ids[0];
}

// The first of `names` that is a special added token.
std::optional<int32_t> FirstSpecial(const AddedVocabulary& added,
                                    std::initializer_list<const char*> names) {
  for (const char* name : names) {
    if (added.IsSpecial(name)) return added.IdOf(name);
  }
  return std::nullopt;
}

// Reads the components from the parsed JSON of `text_size` bytes. Errors
// carry JSON paths; the caller adds the source name.
absl::StatusOr<Components> Build(const Json& root, size_t text_size) {
  if (!root.is_object()) {
    return JsonError(
        "(root)", absl::StrCat("expected an object, found ", root.type_name()));
  }
  if (const auto version = root.find("version"); version != root.end()) {
    if (!version->is_string() || version->get<std::string>() != "1.0") {
      return JsonError("version",
                       absl::StrCat("unknown tokenizer.json version ",
                                    version->dump(), " (expected \"1.0\")"));
    }
  }
  Components parts;

  absl::StatusOr<const Json*> model_json = RequiredField(root, "model", "");
  if (!model_json.ok()) return model_json.status();
  absl::StatusOr<std::string> model_type = ComponentType(**model_json, "model");
  if (!model_type.ok()) return model_type.status();
  if (*model_type != "BPE") {
    return UnsupportedType("model", "model", *model_type, "BPE");
  }
  absl::StatusOr<std::unique_ptr<BpeModel>> model =
      BpeModel::FromJson(**model_json, "model", text_size);
  if (!model.ok()) return model.status();
  parts.model = *std::move(model);

  absl::StatusOr<std::unique_ptr<Normalizer>> normalizer =
      ParseNormalizer(FieldOrNull(root, "normalizer"), "normalizer");
  if (!normalizer.ok()) return normalizer.status();
  parts.normalizer = *std::move(normalizer);

  absl::StatusOr<std::unique_ptr<PreTokenizer>> pre_tokenizer =
      ParsePreTokenizer(FieldOrNull(root, "pre_tokenizer"), "pre_tokenizer");
  if (!pre_tokenizer.ok()) return pre_tokenizer.status();
  parts.pre_tokenizer = *std::move(pre_tokenizer);

  absl::StatusOr<SpecialTokenTemplate> special_tokens =
      ParsePostProcessor(FieldOrNull(root, "post_processor"), "post_processor");
  if (!special_tokens.ok()) return special_tokens.status();
  parts.special_tokens = *std::move(special_tokens);

  absl::StatusOr<std::unique_ptr<Decoder>> decoder =
      ParseDecoder(FieldOrNull(root, "decoder"), "decoder");
  if (!decoder.ok()) return decoder.status();
  parts.decoder = *std::move(decoder);

  absl::StatusOr<AddedVocabulary> added = AddedVocabulary::FromJson(
      &FieldOrNull(root, "added_tokens"), "added_tokens", *parts.model,
      parts.normalizer.get());
  if (!added.ok()) return added.status();
  parts.added = *std::move(added);

  parts.bos_id = SingleId(parts.special_tokens.prefix);
  if (!parts.bos_id.has_value() && parts.special_tokens.prefix.empty()) {
    parts.bos_id = FirstSpecial(parts.added, {"<|begin_of_text|>", "<s>"});
  }
  parts.eos_id = SingleId(parts.special_tokens.suffix);
  if (!parts.eos_id.has_value() && parts.special_tokens.suffix.empty()) {
    parts.eos_id =
        FirstSpecial(parts.added, {"<|end_of_text|>", "<|endoftext|>", "</s>"});
  }
  return parts;
}

absl::Status Components::EncodeText(std::string_view text, bool at_input_start,
                                    std::vector<int32_t>* ids) const {
  std::string normalized(text);
  if (normalizer != nullptr) {
    absl::Status status = normalizer->Normalize(&normalized);
    if (!status.ok()) return status;
  }
  if (normalized.empty()) return absl::OkStatus();
  std::vector<TextSegment> segments;
  added.SplitNormalized(normalized, &segments);
  Pieces pieces;
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids->push_back(segment.id);
      continue;
    }
    pieces.text.assign(normalized, segment.begin, segment.end - segment.begin);
    pieces.ranges.assign(1, {0, pieces.text.size()});
    pieces.at_input_start = at_input_start && segment.begin == 0;
    if (pre_tokenizer != nullptr) {
      absl::Status status = pre_tokenizer->PreTokenize(&pieces);
      if (!status.ok()) return status;
    }
    for (const ByteRange& range : pieces.ranges) {
      model->Tokenize(pieces.Get(range), ids);
    }
  }
  return absl::OkStatus();
}

}  // namespace

struct Tokenizer::Impl : Components {
  explicit Impl(Components parts) : Components(std::move(parts)) {}
};

Tokenizer::Tokenizer(std::unique_ptr<const Impl> impl)
    : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<Tokenizer> Tokenizer::FromJson(std::string_view json_text,
                                              std::string_view source) {
  if (absl::Status s = io::CheckJsonDepth(json_text, source); !s.ok()) {
    return s;
  }
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(source), ": not valid JSON: ", e.what()));
  }
  absl::StatusOr<Components> parts = Build(root, json_text.size());
  if (!parts.ok()) return WithSource(parts.status(), source);
  return Tokenizer(std::make_unique<const Impl>(*std::move(parts)));
}

absl::StatusOr<Tokenizer> Tokenizer::FromFile(
    const std::string& tokenizer_json_path) {
  if (absl::Status s = util::CheckInputFile(tokenizer_json_path); !s.ok()) {
    return s;
  }
  std::ifstream file(tokenizer_json_path, std::ios::binary);
  if (!file) {
    const int error = errno;
    const std::string message =
        absl::StrCat("cannot open tokenizer file ", tokenizer_json_path, ": ",
                     std::strerror(error));
    if (error == ENOENT) return absl::NotFoundError(message);
    return absl::FailedPreconditionError(message);
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) {
    return absl::DataLossError(
        absl::StrCat("error reading tokenizer file ", tokenizer_json_path));
  }
  return FromJson(contents.str(), tokenizer_json_path);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(
    std::string_view text, bool add_special_tokens) const {
  const size_t valid = ValidUtf8Prefix(text);
  if (valid != text.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text to encode is not valid UTF-8: byte 0x%02X at offset %d",
        static_cast<unsigned char>(text[valid]), valid));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) {
    ids.insert(ids.end(), impl_->special_tokens.prefix.begin(),
               impl_->special_tokens.prefix.end());
  }
  std::vector<TextSegment> segments;
  if (!text.empty()) impl_->added.SplitRaw(text, &segments);
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    absl::Status status = impl_->EncodeText(
        text.substr(segment.begin, segment.end - segment.begin),
        segment.begin == 0, &ids);
    if (!status.ok()) return status;
  }
  if (add_special_tokens) {
    ids.insert(ids.end(), impl_->special_tokens.suffix.begin(),
               impl_->special_tokens.suffix.end());
  }
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot decode negative token id ", ids[i], " at position ", i));
    }
    const std::string* token = nullptr;
    if (const AddedToken* added = impl_->added.TokenWithId(ids[i])) {
      token = &added->content;
    } else {
      token = impl_->model->IdToToken(ids[i]);
    }
    if (token == nullptr) continue;
    if (skip_special_tokens && impl_->added.IsSpecial(*token)) continue;
    tokens.push_back(*token);
  }
  if (impl_->decoder == nullptr) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  absl::Status status = impl_->decoder->DecodeChain(&tokens);
  if (!status.ok()) return status;
  std::string joined;
  for (const std::string& token : tokens) joined += token;
  return joined;
}

int Tokenizer::vocab_size() const {
  return std::max(impl_->model->max_id(), impl_->added.max_id()) + 1;
}

absl::Status Tokenizer::CheckIdsBelow(int64_t vocab_size) const {
  const auto outside = [vocab_size](std::string_view what,
                                    std::string_view token, int32_t id) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(what), " \"", AbslView(token), "\" has id ", id,
                     ", outside the model's vocabulary [0, ", vocab_size,
                     "); it is not this model's tokenizer"));
  };
  if (const int32_t id = impl_->model->max_id(); id >= vocab_size) {
    return outside("vocabulary token", *impl_->model->IdToToken(id), id);
  }
  if (const int32_t id = impl_->added.max_id(); id >= vocab_size) {
    return outside("added token", impl_->added.TokenWithId(id)->content, id);
  }
  for (const auto& [name, id] : impl_->special_tokens.named_ids) {
    if (id >= vocab_size) {
      return outside("post_processor special token", name, id);
    }
  }
  return absl::OkStatus();
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (std::optional<int32_t> id = impl_->added.IdOf(token)) return id;
  return impl_->model->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (const AddedToken* added = impl_->added.TokenWithId(id)) {
    return added->content;
  }
  if (const std::string* token = impl_->model->IdToToken(id)) return *token;
  return std::nullopt;
}

bool Tokenizer::IsSpecialToken(int32_t id) const {
  const AddedToken* added = impl_->added.TokenWithId(id);
  return added != nullptr && added->special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos_id; }

}  // namespace prefopt::tokenizer
