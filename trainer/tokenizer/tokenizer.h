// A reader for Hugging Face `tokenizer.json` files whose Encode and Decode
// give the same ids and text as the `tokenizers` library (0.22 and 0.23):
// byte-level BPE as in GPT-2, Llama 3, Qwen2 (with its NFC normalizer),
// DeepSeek and SmolLM files, and SentencePiece-style BPE with byte fallback
// and either Prepend/Replace normalizers (Llama 2 files) or a Metaspace
// pre-tokenizer (newer Llama-2-family and Mistral files). Split regexes see
// the Unicode 16 properties that tokenizers' Oniguruma has.
//
// Supported components (anything else is rejected when the file is read, with
// an error naming the component type and its JSON path):
//   model           BPE (merges as "a b" or ["a", "b"]; byte_fallback;
//                   unk_token with fuse_unk; ignore_merges)
//   normalizer      Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD
//   pre_tokenizer   ByteLevel, Split, Digits, Metaspace, Sequence
//   post_processor  TemplateProcessing (single sequence), ByteLevel, Sequence
//   decoder         ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace,
//                   Sequence
//   added_tokens    with single_word, lstrip, rstrip, normalized, special
// The file's "truncation" and "padding" settings are ignored.
#ifndef PREFOPT_TRAINER_TOKENIZER_TOKENIZER_H_
#define PREFOPT_TRAINER_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace prefopt::tokenizer {

class Tokenizer {
 public:
  // Reads a tokenizer.json file. A missing file is NotFound; malformed JSON
  // and unsupported or invalid components are InvalidArgument, naming the
  // file and the JSON path of the offending value.
  static absl::StatusOr<Tokenizer> FromFile(
      const std::string& tokenizer_json_path);
  // The same from JSON text; `source` names it in error messages.
  static absl::StatusOr<Tokenizer> FromJson(std::string_view json_text,
                                            std::string_view source);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // The ids of `text`, with the post-processor's special tokens around them
  // when `add_special_tokens` is true. Text that is not valid UTF-8 is
  // InvalidArgument (naming the byte offset). Thread-safe.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens) const;

  // The text of `ids`, leaving out special added tokens when
  // `skip_special_tokens` is true. Ids that name no token are skipped, as
  // tokenizers does; a negative id is InvalidArgument. Thread-safe.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const;

  // The largest id of the model vocabulary and the added tokens, plus one.
  int vocab_size() const;

  // OK when every id this tokenizer can produce (its vocabulary, its added
  // tokens and its post-processor's special tokens) is below `vocab_size`, a
  // model's number of embedding rows; else InvalidArgument naming the first
  // token outside and its id.
  absl::Status CheckIdsBelow(int64_t vocab_size) const;

  // Added tokens take precedence over the model vocabulary, both ways.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;

  // Whether `id` is an added token marked special (what Decode skips).
  bool IsSpecialToken(int32_t id) const;

  // The beginning- and end-of-sequence tokens this file implies: the single
  // token the TemplateProcessing puts before (after) $A; without one, the
  // first special added token among "<|begin_of_text|>", "<s>" (for EOS:
  // "<|end_of_text|>", "<|endoftext|>", "</s>"). A model's
  // tokenizer_config.json or generation_config.json may name others.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<const Impl> impl);

  std::unique_ptr<const Impl> impl_;
};

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_TOKENIZER_H_
