// Text and conversational data lines (TRL's dataset shapes) turned into token
// ids, and the detection of a line's shape.
//
// What is matched, exactly (TRL 1.16, transformers 5.24): DPOTrainer's and
// SFTTrainer's _prepare_dataset for a decoder-only model.
//
// Preference pairs {"prompt", "chosen", "rejected"}, demonstrations
// {"prompt", "completion"} and unpaired examples {"prompt", "completion",
// "label"} (KTOTrainer's _prepare_dataset, which tokenizes as DPO does) are
// split the same way. For text data, the EOS
// text is appended to each response unless it already ends with it; then the
// prompt is tokenized alone and prompt + response in one piece, both with the
// tokenizer's special tokens (a BOS where its template adds one, as Llama 3's
// does). The prompt is the longest token prefix the prompt alone shares with
// every prompt + response; each response is the rest of its joint
// tokenization. So a token that straddles the boundary (a prompt ending in a
// space, "...?" + " The" -> "ĠThe") belongs to the response, as in TRL (which
// warns that the prompt's end is then trained in a different form than it is
// prompted in).
//
// Conversational data (prompt and responses are lists of {"role",
// "content"} messages) is rendered by a ChatTemplate as transformers'
// apply_chat_template does: the prompt with add_generation_prompt=True
// whatever its last role, prompt + response as one conversation without it;
// both are tokenized without special tokens (the rendered text holds them)
// and split as above. Nothing is appended (the template ends the turn).
//
// PRIOR demonstrations {"context", "prompt", "completion"}: prompt and
// completion are split as above; the policy sees context ++ prompt ++
// completion, the reference prompt ++ completion, from the same ids. The
// context is tokenized without special tokens, and a BOS that starts the
// prompt moves to the front of the context, which starts the policy's
// sequence (the reference sequence then has no BOS).
//
// TRL 0.28 (before 1.0) tokenized each part of a pair on its own without
// special tokens and always appended EOS; docs/architecture.md lists the
// differences.
//
// EOS and BOS are the tokens named by "eos_token"/"bos_token" in the
// tokenizer_config.json next to tokenizer.json, as transformers reads them (a
// null entry means none); without the file or the entry, the tokenizer.json's
// own (Tokenizer::eos_id/bos_id).
#ifndef PREFOPT_TRAINER_DATA_TEXT_DATA_H_
#define PREFOPT_TRAINER_DATA_TEXT_DATA_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "proto/config.pb.h"
#include "trainer/data/chat_template.h"
#include "trainer/data/examples.h"
#include "trainer/tokenizer/tokenizer.h"

namespace prefopt::data {

// How one line of a data file is written.
enum class LineFormat {
  kTokenIds,        // "prompt_ids", "chosen_ids", ... (see examples.h)
  kText,            // "prompt", "chosen", ... are strings
  kConversational,  // "prompt", "chosen", ... are lists of messages
};

// "pre-tokenized (*_ids)", "text" or "conversational", for messages.
std::string LineFormatName(LineFormat format);

// Parses one line as a JSON object. Errors start with `where` ("file:line"):
// malformed JSON with its byte offset; text that is not valid UTF-8 with the
// path of the field that holds it (e.g. `prompt[1].content`).
absl::StatusOr<nlohmann::json> ParseJsonLine(const std::string& line,
                                             const std::string& where);

// The format of a parsed line: a line with any "*_ids" field is pre-tokenized
// (and may not also hold text fields); otherwise "prompt" decides (a string
// or a list). Errors name `where` and the field.
absl::StatusOr<LineFormat> DetectLineFormat(const nlohmann::json& line,
                                            const std::string& where);

// Whether a line of `format` at `where` can be read with the settings: text
// and conversational lines need a tokenizer (`have_tokenizer`), and
// conversational ones a chat template. The error names the config field to
// set.
absl::Status CheckTextRequirements(LineFormat format, bool have_tokenizer,
                                   DataConfig::ChatTemplate chat_template,
                                   const std::string& where);

// The tokenizer.json a configured path means: the path itself, or
// <path>/tokenizer.json when it is a directory.
std::string TokenizerJsonPath(const std::string& path);

// Tokenizes text and conversational lines (see the conventions above).
class TextEncoder {
 public:
  // Reads the tokenizer (TokenizerJsonPath(tokenizer_path)) and the
  // tokenizer_config.json next to it if there is one. `chat_template` NONE
  // leaves conversational lines unsupported. Fails when the tokenizer has
  // more tokens than the model (`vocab_size`) or lacks a special token the
  // chat template writes.
  static absl::StatusOr<TextEncoder> Create(
      const std::string& tokenizer_path, DataConfig::ChatTemplate chat_template,
      int vocab_size);

  // Turns one parsed line of `format` kText or kConversational into
  // `example`'s ids (its `source` is left alone), before truncation. Errors
  // start with `where` and name the field: missing or mistyped fields,
  // fields of the other example kind, empty parts, messages without a known
  // role or a string content, text the tokenizer rejects.
  absl::Status Encode(const nlohmann::json& line, LineFormat format,
                      ExampleKind kind, const std::string& where,
                      Example* example) const;

  const tokenizer::Tokenizer& tokenizer() const { return tokenizer_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

 private:
  TextEncoder(tokenizer::Tokenizer tokenizer, int vocab_size,
              std::optional<int32_t> eos_id, std::string eos_text,
              std::optional<int32_t> bos_id,
              std::optional<ChatTemplate> chat_template)
      : tokenizer_(std::move(tokenizer)),
        vocab_size_(vocab_size),
        eos_id_(eos_id),
        eos_text_(std::move(eos_text)),
        bos_id_(bos_id),
        chat_template_(std::move(chat_template)) {}

  // The prompt tokenized alone and prompt + response `fields[i]` tokenized
  // together (`joint`, one per field), from text (special tokens added, the
  // EOS text appended to each response unless present) or from messages
  // rendered by the chat template.
  absl::Status TokenizeText(const nlohmann::json& line,
                            absl::Span<const char* const> fields,
                            const std::string& where,
                            std::vector<int32_t>* prompt_alone,
                            std::vector<std::vector<int32_t>>* joint) const;
  absl::Status TokenizeConversation(
      const nlohmann::json& line, absl::Span<const char* const> fields,
      const std::string& where, std::vector<int32_t>* prompt_alone,
      std::vector<std::vector<int32_t>>* joint) const;
  // TRL 1.x's prompt/response split (data_utils.common_prefix_length):
  // `prompt_alone` is the prompt tokenized on its own, `joint[i]` the prompt
  // and response `fields[i]` tokenized together. The prompt becomes the
  // longest token prefix they all share; each response the rest of its joint
  // tokenization (chosen, then rejected). A response left with no tokens is
  // an error naming its field.
  absl::Status SplitResponses(const std::vector<int32_t>& prompt_alone,
                              const std::vector<std::vector<int32_t>>& joint,
                              absl::Span<const char* const> fields,
                              const std::string& where, Example* example) const;
  // PRIOR: tokenizes the optional "context" (without special tokens) and
  // moves a BOS that starts the prompt to the front of it.
  absl::Status MoveBosToContext(const nlohmann::json& line,
                                const std::string& where,
                                Example* example) const;
  // Tokenizes the text of `field`, checking the ids against the model's
  // vocabulary.
  absl::Status Tokenize(std::string_view text, bool add_special_tokens,
                        const std::string& where, std::string_view field,
                        std::vector<int32_t>* ids) const;

  tokenizer::Tokenizer tokenizer_;
  int vocab_size_;
  std::optional<int32_t> eos_id_;
  std::string eos_text_;  // the EOS token's text; empty without one
  std::optional<int32_t> bos_id_;
  std::optional<ChatTemplate> chat_template_;
};

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_TEXT_DATA_H_
