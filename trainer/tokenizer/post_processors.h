// Post-processors of tokenizer.json, for single sequences: TemplateProcessing
// (special tokens around $A), ByteLevel (offsets only: no change to ids) and
// Sequence. They run only when special tokens are requested.
#ifndef PREFOPT_TRAINER_TOKENIZER_POST_PROCESSORS_H_
#define PREFOPT_TRAINER_TOKENIZER_POST_PROCESSORS_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"

namespace prefopt::tokenizer {

// What a post-processor does to a single sequence's ids: put `prefix` before
// and `suffix` after them.
struct SpecialTokenTemplate {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
};

// Reads the post-processor at `path` (JSON null: no special tokens).
// RobertaProcessing, BertProcessing and other types are rejected.
absl::StatusOr<SpecialTokenTemplate> ParsePostProcessor(const Json& json,
                                                        std::string_view path);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_POST_PROCESSORS_H_
