// Normalizers of tokenizer.json: Sequence, Prepend, Replace and the Unicode
// normalization forms NFC, NFD, NFKC and NFKD (with ICU, on the Unicode 9.0
// repertoire that `tokenizers` normalizes; see normalizers.cc). The other
// types are rejected when the file is read.
#ifndef PREFOPT_TRAINER_TOKENIZER_NORMALIZERS_H_
#define PREFOPT_TRAINER_TOKENIZER_NORMALIZERS_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"

namespace prefopt::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `text` (one piece of the input between added tokens).
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// The normalizer at `path`; nullptr for JSON null.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const Json& json, std::string_view path);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_NORMALIZERS_H_
