#include "trainer/data/text_data.h"

#include <algorithm>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "trainer/io/json_file.h"

namespace prefopt::data {
namespace {

using Json = nlohmann::json;

absl::string_view View(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

absl::Status FieldError(const std::string& where, std::string_view field,
                        std::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": field \"", View(field), "\" ", View(message)));
}

// Follows a JSON parse to the value being read when it fails, to name the
// field that holds text that is not valid UTF-8.
class ErrorPathFinder : public nlohmann::json_sax<Json> {
 public:
  std::string path() const { return path_; }

  bool null() override { return Value(); }
  bool boolean(bool) override { return Value(); }
  bool number_integer(number_integer_t) override { return Value(); }
  bool number_unsigned(number_unsigned_t) override { return Value(); }
  bool number_float(number_float_t, const string_t&) override {
    return Value();
  }
  bool string(string_t&) override { return Value(); }
  bool binary(binary_t&) override { return Value(); }
  bool start_object(std::size_t) override {
    frames_.push_back({false, "", 0});
    return true;
  }
  bool key(string_t& key) override {
    frames_.back().key = key;
    return true;
  }
  bool end_object() override {
    frames_.pop_back();
    return Value();
  }
  bool start_array(std::size_t) override {
    frames_.push_back({true, "", 0});
    return true;
  }
  bool end_array() override {
    frames_.pop_back();
    return Value();
  }
  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception&) override {
    for (size_t i = 0; i < frames_.size(); ++i) {
      if (frames_[i].array) {
        absl::StrAppend(&path_, "[", frames_[i].index, "]");
      } else {
        absl::StrAppend(&path_, i > 0 ? "." : "", frames_[i].key);
      }
    }
    return false;
  }

 private:
  struct Frame {
    bool array;
    std::string key;
    size_t index;
  };

  // A value ended: the enclosing array moves to its next element.
  bool Value() {
    if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
    return true;
  }

  std::vector<Frame> frames_;
  std::string path_;
};

constexpr const char* kIdsFields[] = {"prompt_ids", "chosen_ids",
                                      "rejected_ids", "completion_ids",
                                      "context_ids"};
constexpr const char* kTextFields[] = {"prompt", "chosen", "rejected",
                                       "completion", "context"};

// The string field `field` of a text line; nullptr when `optional` and absent
// or null.
absl::StatusOr<const std::string*> TextField(const Json& line,
                                             const char* field,
                                             const std::string& where,
                                             bool optional = false) {
  const auto it = line.find(field);
  if (it == line.end() || (optional && it->is_null())) {
    if (optional) return nullptr;
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": missing field \"", field, "\""));
  }
  if (!it->is_string()) {
    return FieldError(
        where, field,
        absl::StrCat("must be a string, got ", io::DescribeJson(*it)));
  }
  const std::string& text = it->get_ref<const std::string&>();
  if (text.empty()) return FieldError(where, field, "is empty");
  return &text;
}

// The list of messages in `field` of a conversational line.
absl::StatusOr<std::vector<ChatMessage>> MessagesField(
    const Json& line, const char* field, const std::string& where) {
  const auto it = line.find(field);
  if (it == line.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": missing field \"", field, "\""));
  }
  if (!it->is_array()) {
    return FieldError(
        where, field,
        absl::StrCat("must be a list of {\"role\", \"content\"} messages, as "
                     "\"prompt\" is, got ",
                     io::DescribeJson(*it)));
  }
  if (it->empty()) return FieldError(where, field, "is an empty list");
  std::vector<ChatMessage> messages;
  messages.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string at = absl::StrCat(field, "[", i, "]");
    if (!m.is_object()) {
      return FieldError(where, at,
                        absl::StrCat("must be a {\"role\", \"content\"} "
                                     "message object, got ",
                                     io::DescribeJson(m)));
    }
    ChatMessage message;
    for (const char* part : {"role", "content"}) {
      const std::string part_at = absl::StrCat(at, ".", part);
      const auto value = m.find(part);
      if (value == m.end()) return FieldError(where, part_at, "is missing");
      if (!value->is_string()) {
        return FieldError(
            where, part_at,
            absl::StrCat("must be a string, got ", io::DescribeJson(*value)));
      }
      (part[0] == 'r' ? message.role : message.content) =
          value->get<std::string>();
    }
    if (!IsKnownChatRole(message.role)) {
      return FieldError(where, absl::StrCat(at, ".role"),
                        absl::StrCat("is the unknown role \"", message.role,
                                     "\" (expected ", kKnownChatRoles, ")"));
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

// Reads "eos_token" or "bos_token" of a tokenizer_config.json: a string or an
// {"content": ...} object. Absent: std::nullopt; null: "".
absl::StatusOr<std::optional<std::string>> ConfigToken(
    const Json& config, const char* field, const std::string& file) {
  const auto it = config.find(field);
  if (it == config.end()) return std::nullopt;
  if (it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") &&
      (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": field \"", field,
                   "\" must be a token string or {\"content\": ...}, got ",
                   io::DescribeJson(*it)));
}

// The id of the special token named by `field` of tokenizer_config.json, or
// the tokenizer.json's own when the file or the field is absent.
absl::StatusOr<std::optional<int32_t>> SpecialTokenId(
    const tokenizer::Tokenizer& tok, const Json* config,
    const std::string& config_file, const char* field,
    std::optional<int32_t> fallback) {
  if (config == nullptr) return fallback;
  absl::StatusOr<std::optional<std::string>> text =
      ConfigToken(*config, field, config_file);
  if (!text.ok()) return text.status();
  if (!text->has_value()) return fallback;
  if ((*text)->empty()) return std::optional<int32_t>();
  const std::optional<int32_t> id = tok.TokenToId(**text);
  if (!id.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_file, ": field \"", field, "\" names \"", **text,
                     "\", which is not a token of the tokenizer"));
  }
  return id;
}

std::string NoChatTemplateMessage() {
  return "a conversational example (\"prompt\" is a list of messages) needs "
         "a chat template: set data.chat_template to CHATML or LLAMA3 (the "
         "Jinja template of tokenizer_config.json is not evaluated)";
}

}  // namespace

absl::Status CheckTextRequirements(LineFormat format, bool have_tokenizer,
                                   DataConfig::ChatTemplate chat_template,
                                   const std::string& where) {
  if (format == LineFormat::kTokenIds) return absl::OkStatus();
  if (!have_tokenizer) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": ", LineFormatName(format),
        " data needs a tokenizer: set data.tokenizer_path to a "
        "tokenizer.json (or set model.hf_path to a model folder that has "
        "one), or use pre-tokenized *_ids fields"));
  }
  if (format == LineFormat::kConversational &&
      chat_template == DataConfig::NONE) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": ", NoChatTemplateMessage()));
  }
  return absl::OkStatus();
}

std::string LineFormatName(LineFormat format) {
  switch (format) {
    case LineFormat::kTokenIds:
      return "pre-tokenized (*_ids)";
    case LineFormat::kText:
      return "text";
    case LineFormat::kConversational:
      return "conversational";
  }
  return "unknown";
}

absl::StatusOr<Json> ParseJsonLine(const std::string& line,
                                   const std::string& where) {
  if (absl::Status s = io::CheckJsonDepth(line, where, /*jsonl_line=*/true);
      !s.ok()) {
    return s;
  }
  Json obj;
  try {
    obj = Json::parse(line);
  } catch (const Json::parse_error& e) {
    const std::string what = e.what();
    if (what.find("UTF-8") != std::string::npos ||
        what.find("surrogate") != std::string::npos) {
      ErrorPathFinder finder;
      Json::sax_parse(line, &finder);
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field \"", finder.path(),
          "\" is not valid UTF-8 text (JSON byte ", e.byte, " of the line)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": malformed JSON at byte ", e.byte, ": ", e.what()));
  } catch (const Json::exception& e) {
    // out_of_range: a number such as 1e400 that no double holds.
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": invalid JSON: ", e.what()));
  }
  if (!obj.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected a JSON object, got ", obj.type_name()));
  }
  return obj;
}

absl::StatusOr<LineFormat> DetectLineFormat(const Json& line,
                                            const std::string& where) {
  const char* ids_field = nullptr;
  for (const char* field : kIdsFields) {
    if (line.contains(field)) {
      ids_field = field;
      break;
    }
  }
  for (const char* field : kTextFields) {
    if (ids_field != nullptr && line.contains(field)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field \"", field, "\" is text but field \"", ids_field,
          "\" is pre-tokenized; a line holds one or the other"));
    }
  }
  if (ids_field != nullptr) return LineFormat::kTokenIds;
  const auto prompt = line.find("prompt");
  if (prompt == line.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where,
        ": missing field \"prompt\" (expected TRL's {\"prompt\", \"chosen\", "
        "\"rejected\"}, {\"prompt\", \"completion\"} or {\"prompt\", "
        "\"completion\", \"label\"}, or their *_ids forms)"));
  }
  if (prompt->is_string()) return LineFormat::kText;
  if (prompt->is_array()) return LineFormat::kConversational;
  return FieldError(
      where, "prompt",
      absl::StrCat("must be a string (text data) or a list of messages "
                   "(conversational data), got ",
                   io::DescribeJson(*prompt)));
}

std::string TokenizerJsonPath(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    return (std::filesystem::path(path) / "tokenizer.json").string();
  }
  return path;
}

absl::StatusOr<TextEncoder> TextEncoder::Create(
    const std::string& tokenizer_path, DataConfig::ChatTemplate chat_template,
    int vocab_size) {
  const std::string json_path = TokenizerJsonPath(tokenizer_path);
  absl::StatusOr<tokenizer::Tokenizer> tok =
      tokenizer::Tokenizer::FromFile(json_path);
  if (!tok.ok()) return tok.status();
  if (absl::Status s = tok->CheckIdsBelow(vocab_size); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(json_path, ": ", s.message()));
  }

  const std::string config_file =
      (std::filesystem::path(json_path).parent_path() / "tokenizer_config.json")
          .string();
  std::optional<Json> config;
  absl::StatusOr<Json> read = io::ReadJsonFile(config_file);
  if (read.ok()) {
    if (!read->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_file, ": expected a JSON object"));
    }
    config = *std::move(read);
  } else if (!absl::IsNotFound(read.status())) {
    return read.status();
  }
  const Json* config_json = config.has_value() ? &*config : nullptr;
  absl::StatusOr<std::optional<int32_t>> eos = SpecialTokenId(
      *tok, config_json, config_file, "eos_token", tok->eos_id());
  if (!eos.ok()) return eos.status();
  absl::StatusOr<std::optional<int32_t>> bos = SpecialTokenId(
      *tok, config_json, config_file, "bos_token", tok->bos_id());
  if (!bos.ok()) return bos.status();

  std::optional<ChatTemplate> chat;
  if (chat_template != DataConfig::NONE) {
    std::string bos_text;
    if (bos->has_value()) bos_text = tok->IdToToken(**bos).value_or("");
    absl::StatusOr<ChatTemplate> made =
        ChatTemplate::Create(chat_template, bos_text);
    if (!made.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.chat_template: ", made.status().message(), " (",
                       json_path, ")"));
    }
    for (const std::string& token : made->SpecialTokens()) {
      const std::optional<int32_t> id = tok->TokenToId(token);
      if (!id.has_value() || !tok->IsSpecialToken(*id)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data.chat_template: ", ChatTemplateName(chat_template),
            " writes the token \"", token, "\", which ", json_path,
            " does not have as a special token; is it this model's "
            "template?"));
      }
    }
    chat = *std::move(made);
  }
  std::string eos_text;
  if (eos->has_value()) eos_text = tok->IdToToken(**eos).value_or("");
  return TextEncoder(*std::move(tok), vocab_size, *eos, std::move(eos_text),
                     *bos, std::move(chat));
}

absl::Status TextEncoder::Tokenize(std::string_view text,
                                   bool add_special_tokens,
                                   const std::string& where,
                                   std::string_view field,
                                   std::vector<int32_t>* ids) const {
  absl::StatusOr<std::vector<int32_t>> encoded =
      tokenizer_.Encode(text, add_special_tokens);
  if (!encoded.ok()) {
    return FieldError(
        where, field,
        absl::StrCat("cannot be tokenized: ", encoded.status().message()));
  }
  if (encoded->empty()) return FieldError(where, field, "gives no tokens");
  *ids = *std::move(encoded);
  return absl::OkStatus();
}

absl::Status TextEncoder::Encode(const Json& line, LineFormat format,
                                 ExampleKind kind, const std::string& where,
                                 Example* example) const {
  absl::Status s = CheckShapeFields(line, kind, /*ids=*/false, where);
  if (!s.ok()) return s;
  const bool conversational = format == LineFormat::kConversational;
  if (conversational && !chat_template_.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": ", NoChatTemplateMessage()));
  }
  if (!conversational && !eos_id_.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        where,
        ": text data needs an EOS token to end each response (as TRL "
        "appends one), but the tokenizer names none; set \"eos_token\" in "
        "the tokenizer_config.json next to tokenizer.json"));
  }
  const bool pairs = kind == ExampleKind::kPreference;
  if (pairs) {
    s = ParsePreferenceFraction(line, where, &example->preference_fraction);
    if (!s.ok()) return s;
  }
  if (kind == ExampleKind::kUnpaired) {
    s = ParseLabel(line, where, &example->label);
    if (!s.ok()) return s;
  }
  const std::vector<const char*> fields =
      pairs ? std::vector<const char*>{"chosen", "rejected"}
            : std::vector<const char*>{"completion"};
  std::vector<int32_t> prompt_alone;
  std::vector<std::vector<int32_t>> joint(fields.size());
  s = conversational
          ? TokenizeConversation(line, fields, where, &prompt_alone, &joint)
          : TokenizeText(line, fields, where, &prompt_alone, &joint);
  if (!s.ok()) return s;
  s = SplitResponses(prompt_alone, joint, fields, where, example);
  if (!s.ok() || kind != ExampleKind::kDemonstration) return s;
  return MoveBosToContext(line, where, example);
}

absl::Status TextEncoder::SplitResponses(
    const std::vector<int32_t>& prompt_alone,
    const std::vector<std::vector<int32_t>>& joint,
    absl::Span<const char* const> fields, const std::string& where,
    Example* example) const {
  size_t prompt_len = prompt_alone.size();
  for (const std::vector<int32_t>& ids : joint) {
    const size_t limit = std::min(prompt_len, ids.size());
    size_t n = 0;
    while (n < limit && ids[n] == prompt_alone[n]) ++n;
    prompt_len = n;
  }
  example->prompt.assign(prompt_alone.begin(),
                         prompt_alone.begin() + prompt_len);
  for (size_t i = 0; i < joint.size(); ++i) {
    std::vector<int32_t>& ids = i == 1 ? example->rejected : example->chosen;
    ids.assign(joint[i].begin() + prompt_len, joint[i].end());
    if (ids.empty()) {
      return FieldError(where, fields[i], "gives no tokens after the prompt's");
    }
  }
  return absl::OkStatus();
}

absl::Status TextEncoder::MoveBosToContext(const Json& line,
                                           const std::string& where,
                                           Example* example) const {
  absl::StatusOr<const std::string*> context =
      TextField(line, "context", where, /*optional=*/true);
  if (!context.ok()) return context.status();
  if (*context == nullptr) return absl::OkStatus();
  absl::Status s =
      Tokenize(**context, false, where, "context", &example->context);
  if (!s.ok()) return s;
  // The context starts the policy's sequence, so a BOS at the start of the
  // prompt (the tokenizer's or the template's) moves in front of it.
  if (bos_id_.has_value() && !example->prompt.empty() &&
      example->prompt.front() == *bos_id_) {
    example->context.insert(example->context.begin(), *bos_id_);
    example->prompt.erase(example->prompt.begin());
  }
  return absl::OkStatus();
}

absl::Status TextEncoder::TokenizeText(
    const Json& line, absl::Span<const char* const> fields,
    const std::string& where, std::vector<int32_t>* prompt_alone,
    std::vector<std::vector<int32_t>>* joint) const {
  absl::StatusOr<const std::string*> prompt = TextField(line, "prompt", where);
  if (!prompt.ok()) return prompt.status();
  absl::Status s = Tokenize(**prompt, true, where, "prompt", prompt_alone);
  if (!s.ok()) return s;
  // TRL appends the EOS text to each response unless it already ends with
  // it, then tokenizes prompt + response in one piece.
  for (size_t i = 0; i < fields.size(); ++i) {
    absl::StatusOr<const std::string*> response =
        TextField(line, fields[i], where);
    if (!response.ok()) return response.status();
    std::string text = absl::StrCat(**prompt, **response);
    if (!absl::EndsWith(text, eos_text_)) text += eos_text_;
    s = Tokenize(text, true, where, fields[i], &(*joint)[i]);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status TextEncoder::TokenizeConversation(
    const Json& line, absl::Span<const char* const> fields,
    const std::string& where, std::vector<int32_t>* prompt_alone,
    std::vector<std::vector<int32_t>>* joint) const {
  absl::StatusOr<std::vector<ChatMessage>> prompt =
      MessagesField(line, "prompt", where);
  if (!prompt.ok()) return prompt.status();
  // As TRL: the prompt rendered with a generation prompt and the whole
  // conversation without, each tokenized without special tokens (the
  // rendered text holds them).
  absl::Status s =
      Tokenize(chat_template_->Render(*prompt, /*add_generation_prompt=*/true),
               false, where, "prompt", prompt_alone);
  if (!s.ok()) return s;
  for (size_t i = 0; i < fields.size(); ++i) {
    absl::StatusOr<std::vector<ChatMessage>> response =
        MessagesField(line, fields[i], where);
    if (!response.ok()) return response.status();
    std::vector<ChatMessage> conversation = *prompt;
    conversation.insert(conversation.end(), response->begin(), response->end());
    s = Tokenize(chat_template_->Render(conversation, false), false, where,
                 fields[i], &(*joint)[i]);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace prefopt::data
