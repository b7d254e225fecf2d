// Text and conversational data lines (TRL's dataset shapes) turned into token
// ids, and the detection of a line's shape.
//
// What is matched, exactly (TRL 0.28.0, transformers 4.57):
//
// Preference pairs {"prompt", "chosen", "rejected"}, as DPOTrainer prepares a
// decoder-only model's data (_prepare_dataset calls tokenize_row with
// add_special_tokens=False): each part is tokenized on its own without
// special tokens, so the prompt gets no BOS even where the tokenizer's
// template adds one; for text data EOS is appended to chosen and rejected;
// for conversational data nothing is appended (the template ends the turn).
//
// Demonstrations {"prompt", "completion"}, as SFTTrainer's prompt-completion
// case: the prompt is tokenized with the tokenizer's special tokens
// (`tokenizer(prompt)`: BOS where the template adds one); for text data the
// EOS token is appended to the completion unless its text already ends with
// it. SFTTrainer tokenizes prompt + completion in one piece and takes the
// tokens after the prompt's; here the completion is tokenized on its own, so
// that it tokenizes identically for the policy and PRIOR's reference. The
// two agree unless a token would straddle the prompt/completion boundary
// (e.g. a prompt ending in a space), where TRL itself warns of a mismatch.
//
// PRIOR demonstrations {"context", "prompt", "completion"}: the policy sees
// context ++ prompt ++ completion, the reference prompt ++ completion, from
// the same ids. The special tokens SFT would put on the prompt go on the
// context instead, which starts the policy's sequence (the reference
// sequence then has no BOS). Conversational PRIOR takes a text context; a
// BOS the template writes at the start of the prompt moves to the front of
// the context.
//
// Conversational data (prompt and responses are lists of {"role",
// "content"} messages) is rendered by a ChatTemplate the way TRL's
// data_utils.apply_chat_template does (see chat_template.h) for both
// kinds, then tokenized without special tokens (the rendered text contains
// them). SFTTrainer renders the prompt with add_generation_prompt=True
// whatever its last role; the two agree whenever the prompt ends with a user
// or tool message.
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
              std::optional<int32_t> eos_id, std::optional<int32_t> bos_id,
              std::optional<ChatTemplate> chat_template)
      : tokenizer_(std::move(tokenizer)),
        vocab_size_(vocab_size),
        eos_id_(eos_id),
        bos_id_(bos_id),
        chat_template_(std::move(chat_template)) {}

  absl::Status EncodeText(const nlohmann::json& line, ExampleKind kind,
                          const std::string& where, Example* example) const;
  absl::Status EncodeConversation(const nlohmann::json& line, ExampleKind kind,
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
  std::optional<int32_t> bos_id_;
  std::optional<ChatTemplate> chat_template_;
};

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_TEXT_DATA_H_
