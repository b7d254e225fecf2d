// The "added_tokens" of tokenizer.json: tokens matched in the text before
// pre-tokenization (leftmost, longest first) and never split, with the
// single_word / lstrip / rstrip / normalized / special options of the
// Hugging Face `tokenizers` library.
#ifndef PREFOPT_TRAINER_TOKENIZER_ADDED_VOCABULARY_H_
#define PREFOPT_TRAINER_TOKENIZER_ADDED_VOCABULARY_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "trainer/tokenizer/bpe.h"
#include "trainer/tokenizer/json_util.h"
#include "trainer/tokenizer/normalizers.h"
#include "trainer/tokenizer/regex.h"

namespace prefopt::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A piece of text between added tokens (id < 0), or an added token.
struct TextSegment {
  size_t begin;
  size_t end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // Reads the "added_tokens" array at `path` (null or absent: none). Ids are
  // assigned as tokenizers assigns them: a token already in the model's
  // vocabulary keeps that id, a new one follows the largest id so far.
  // Patterns of normalized tokens are the token contents passed through
  // `normalizer` (may be null).
  static absl::StatusOr<AddedVocabulary> FromJson(const Json* json,
                                                  std::string_view path,
                                                  const BpeModel& model,
                                                  const Normalizer* normalizer);

  // Cuts `text` at the matches of the tokens that match the raw input
  // (normalized == false), appending the segments to `out`.
  void SplitRaw(std::string_view text, std::vector<TextSegment>* out) const {
    raw_.Split(*this, text, out);
  }
  // The same for the tokens that match normalized text.
  void SplitNormalized(std::string_view text,
                       std::vector<TextSegment>* out) const {
    normalized_.Split(*this, text, out);
  }

  std::optional<int32_t> IdOf(std::string_view content) const;
  // nullptr when `id` is not an added token.
  const AddedToken* TokenWithId(int32_t id) const;
  // True for the content of a special token.
  bool IsSpecial(std::string_view content) const {
    return special_contents_.contains(AbslView(content));
  }
  // The largest added id, or -1 when there are none.
  int32_t max_id() const { return max_id_; }

 private:
  // Leftmost-longest matching of a set of patterns, as the aho-corasick
  // crate's MatchKind::LeftmostLongest.
  class Matcher {
   public:
    // Adds `pattern` for the token tokens_[token_index]; the first of equal
    // patterns wins.
    void Add(std::string_view pattern, int32_t token_index);
    void Split(const AddedVocabulary& vocabulary, std::string_view text,
               std::vector<TextSegment>* out) const;

   private:
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;
      int32_t token_index = -1;
    };
    // The longest pattern starting at text[pos]: its token index (or -1) and
    // length.
    int32_t LongestAt(std::string_view text, size_t pos, size_t* length) const;

    std::vector<Node> nodes_ = std::vector<Node>(1);
    std::array<bool, 256> first_bytes_{};
  };

  // Rust regex `\w`: whether the character is a word character.
  bool IsWordChar(char32_t c) const;

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, size_t> index_by_id_;
  absl::flat_hash_map<std::string, int32_t> id_by_content_;
  absl::flat_hash_set<std::string> special_contents_;
  int32_t max_id_ = -1;
  Matcher raw_;
  Matcher normalized_;
  // Compiled only when a token is single_word.
  std::optional<Regex> word_char_;
};

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_ADDED_VOCABULARY_H_
