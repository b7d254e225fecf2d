// A compiled regular expression with the matching semantics the Hugging Face
// `tokenizers` library gets from Oniguruma: Unicode-aware classes and
// properties on UTF-8 text, `^`/`$` at line boundaries, and the iteration of
// non-overlapping matches of the `onig` crate's find_iter. Built on PCRE2
// (UTF + UCP, JIT when available), whose Unicode 14 tables are patched to
// Oniguruma's Unicode 16 for the properties tokenizers' regexes use: general
// categories (\p{L}, \p{Lu}, \p{M}, \p{P}, \p{S}, ...), a few scripts,
// \w \d \s \h (Oniguruma's meanings: \h is a hex digit) and POSIX brackets.
// Other properties, and a few forms PCRE2 cannot write exactly, are refused
// when the pattern is compiled.
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
  // Compiles `pattern`; an invalid or unsupported pattern is InvalidArgument
  // with the reason (PCRE2's message and the offset of the error).
  static absl::StatusOr<Regex> Compile(std::string_view pattern);

  // One character for which Rust's char::is_numeric holds, as the
  // tokenizers build has it (Unicode 17 in 0.23.3), for the Digits
  // pre-tokenizer.
  static absl::StatusOr<Regex> RustNumeric();

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

  // Compiles `translated`, PCRE2's form of `pattern` (which names it in
  // messages).
  static absl::StatusOr<Regex> CompilePcre2(std::string_view pattern,
                                            const std::string& translated);

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
