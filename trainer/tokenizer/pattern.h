// The `pattern` of Split pre-tokenizers and of Replace normalizers and
// decoders: {"String": "..."} (a literal) or {"Regex": "..."}.
#ifndef PREFOPT_TRAINER_TOKENIZER_PATTERN_H_
#define PREFOPT_TRAINER_TOKENIZER_PATTERN_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"
#include "trainer/tokenizer/regex.h"

namespace prefopt::tokenizer {

class Pattern {
 public:
  // A literal (non-empty) or a compiled regex.
  explicit Pattern(std::string literal) : literal_(std::move(literal)) {}
  explicit Pattern(Regex regex) : regex_(std::move(regex)) {}

  // Reads the pattern object at `path`. An empty pattern is rejected.
  static absl::StatusOr<Pattern> FromJson(const Json& json,
                                          std::string_view path);

  // Appends the byte ranges of the non-overlapping matches in `text`, left to
  // right.
  absl::Status FindMatches(std::string_view text,
                           std::vector<ByteRange>* matches) const;

  // `text` with every match replaced by `content`.
  absl::StatusOr<std::string> ReplaceAll(std::string_view text,
                                         std::string_view content) const;

 private:
  std::string literal_;  // when regex_ is empty
  std::optional<Regex> regex_;
};

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_PATTERN_H_
