// A compiled regular expression with the matching semantics the Hugging Face
// `tokenizers` library gets from Oniguruma: Unicode-aware classes and
// properties on UTF-8 text, `\s` meaning the Unicode White_Space property,
// `^`/`$` at line boundaries, and the iteration of non-overlapping matches of
// the `onig` crate's find_iter. Built on PCRE2 (UTF + UCP, JIT when
// available).
#ifndef PREFOPT_TRAINER_TOKENIZER_REGEX_H_
#define PREFOPT_TRAINER_TOKENIZER_REGEX_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct pcre2_real_code_8;

namespace prefopt::tokenizer {

// A [begin, end) byte range.
using ByteRange = std::pair<size_t, size_t>;

class Regex {
 public:
  // Compiles `pattern`; an invalid pattern is InvalidArgument with PCRE2's
  // message and the offset of the error.
  static absl::StatusOr<Regex> Compile(std::string_view pattern);

  // Appends the byte ranges of the successive non-overlapping matches in the
  // valid UTF-8 `subject`, searched from left to right. An empty match that
  // ends where the previous match ended is skipped. Fails only when PCRE2
  // gives up (match or heap limits).
  absl::Status FindAll(std::string_view subject,
                       std::vector<ByteRange>* matches) const;

  // True when the whole of `subject` (valid UTF-8) matches.
  bool FullMatch(std::string_view subject) const;

 private:
  struct CodeDeleter {
    void operator()(pcre2_real_code_8* code) const;
  };

  Regex(std::string pattern, pcre2_real_code_8* code, bool jit)
      : pattern_(std::move(pattern)), code_(code), jit_(jit) {}

  // Searches from `start`; returns false when nothing matches.
  absl::StatusOr<bool> Search(std::string_view subject, size_t start,
                              uint32_t options, ByteRange* match) const;

  std::string pattern_;
  std::unique_ptr<pcre2_real_code_8, CodeDeleter> code_;
  bool jit_ = false;
};

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_REGEX_H_
