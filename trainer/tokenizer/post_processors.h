// Post-processors of tokenizer.json, for single sequences: TemplateProcessing
// (special tokens around $A), ByteLevel (offsets only: no change to ids) and
// Sequence. They run only when special tokens are requested.
#ifndef PREFOPT_TRAINER_TOKENIZER_POST_PROCESSORS_H_
#define PREFOPT_TRAINER_TOKENIZER_POST_PROCESSORS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"

namespace prefopt::tokenizer {

// What a post-processor does to a single sequence's ids: put `prefix` before
// and `suffix` after them.
struct SpecialTokenTemplate {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
  // Every id of `prefix` and `suffix` with the name of the special token
  // that holds it, for errors about ids the model does not have.
  std::vector<std::pair<std::string, int32_t>> named_ids;
};

// Reads the post-processor at `path` (JSON null: no special tokens).
// RobertaProcessing, BertProcessing and other types are rejected.
absl::StatusOr<SpecialTokenTemplate> ParsePostProcessor(const Json& json,
                                                        std::string_view path);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_POST_PROCESSORS_H_
