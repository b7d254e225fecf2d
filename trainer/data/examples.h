// Training examples read from pre-tokenized JSONL, with TRL-style truncation.
// Three shapes (docs/architecture.md "Formats users already have"):
// - preference pairs {"prompt_ids", "chosen_ids", "rejected_ids"} (DPO family,
//   SparsePO);
// - demonstrations {"prompt_ids", "completion_ids"} (SFT, implicit-reward SFT),
//   with an optional "context_ids" (PRIOR: seen by the policy, not by the
//   reference);
// - unpaired examples {"prompt_ids", "completion_ids", "label"} (KTO), the
//   label true for a desirable completion and false for an undesirable one.
// Preference pairs may carry "preference_fraction": the fraction of raters who
// preferred the chosen response (for the idealized ranking accuracy).
#ifndef PREFOPT_TRAINER_DATA_EXAMPLES_H_
#define PREFOPT_TRAINER_DATA_EXAMPLES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "proto/config.pb.h"

namespace prefopt::data {

enum class ExampleKind {
  kPreference,     // prompt + chosen / rejected
  kDemonstration,  // [context +] prompt + completion
  kUnpaired,       // prompt + completion, labelled desirable or not
};

struct Example {
  std::vector<int32_t> context;  // demonstrations only; may be empty
  std::vector<int32_t> prompt;
  std::vector<int32_t> chosen;  // the completion, for the other kinds
  // Preference pairs: the rejected response. Unpaired examples: the KL
  // completion (AttachKlCompletions), empty when the objective needs none.
  std::vector<int32_t> rejected;
  // Fraction of raters preferring `chosen`, or a negative value when the data
  // does not say.
  float preference_fraction = -1.0f;
  // Unpaired examples: whether the completion is desirable (TRL's "label").
  bool label = false;
  std::string source;  // "file:line", for messages

  // The responses in sequence order: {chosen, rejected}, {completion} or
  // {completion, KL completion}.
  int num_responses() const { return rejected.empty() ? 1 : 2; }
  const std::vector<int32_t>& response(int i) const {
    return i == 0 ? chosen : rejected;
  }
};

struct TruncationOptions {
  int max_length = 0;         // context + prompt + response tokens
  int max_prompt_length = 0;  // 0: no separate limit
  TruncationMode mode = KEEP_END;
};

struct Dataset {
  ExampleKind kind = ExampleKind::kPreference;
  std::vector<Example> examples;
  int64_t dropped_too_long = 0;     // no room for a response after the prompt
  int64_t truncated = 0;            // kept, but shortened
  int64_t identical_responses = 0;  // chosen == rejected (kept; warned)
};

// Reads every file in order. Errors name the file, the 1-based line and the
// field: malformed JSON, a missing or non-integer-array field, an id outside
// [0, vocab_size), an empty prompt or response, a field of the other shape.
// Unpaired examples get no KL completions.
absl::StatusOr<Dataset> ReadExamplesJsonl(const std::vector<std::string>& files,
                                          ExampleKind kind, int vocab_size,
                                          const TruncationOptions& truncation);

// Parses one pre-tokenized JSON object (a line of a `*_ids` file) of the
// shape of `kind` into `example`, with the checks ReadExamplesJsonl makes.
// Errors start with `where` ("file:line") and name the field.
absl::Status ParseTokenIdsExample(const nlohmann::json& obj, ExampleKind kind,
                                  int vocab_size, const std::string& where,
                                  Example* example);

// Checks that `obj` has no field of another shape than `kind`'s (text names,
// or their *_ids forms when `ids`). The error starts with `where`, names the
// field and the shape it belongs to, and says which shape the objective
// trains on.
absl::Status CheckShapeFields(const nlohmann::json& obj, ExampleKind kind,
                              bool ids, const std::string& where);

// Reads the "label" of an unpaired example: true or false.
absl::Status ParseLabel(const nlohmann::json& obj, const std::string& where,
                        bool* label);

// Reads the optional "preference_fraction" of a preference pair into
// `fraction` (left as it is when absent): a number in (0, 1).
absl::Status ParsePreferenceFraction(const nlohmann::json& obj,
                                     const std::string& where, float* fraction);

// Truncates a parsed example and adds it to `dataset`, or counts it as
// dropped when no response token fits; counts identical responses of pairs
// (before truncation) and truncated examples. An unpaired example (a dataset
// of kind kUnpaired) keeps its whole completion, which AttachKlCompletions
// cuts: it may also be another example's KL completion, which TRL cuts after
// that example's prompt.
void AddExample(Example example, const TruncationOptions& truncation,
                Dataset* dataset);

// Applies truncation to one example: the prompt is cut to max_prompt_length
// (KEEP_END keeps its last tokens, KEEP_START its first), then each response is
// cut at its end so that context + prompt + response fits max_length. Returns
// false when no response token fits (the example is dropped).
bool TruncateExample(const TruncationOptions& truncation, Example* example,
                     bool* was_truncated);

// Finishes unpaired examples (docs/objectives.md §9). With kl_chunk > 0 each
// example gets its KL completion (`rejected`) as TRL 1.16's KTOTrainer builds
// it: within each run of kl_chunk consecutive examples (the last run may be
// shorter), the completion of the example before it, the first taking the
// last one's, so the KL completions of a run are its own completions paired
// with other prompts. Then every completion is cut at its end to fit
// max_length after the example's own prompt.
void AttachKlCompletions(int kl_chunk, const TruncationOptions& truncation,
                         std::vector<Example>* examples);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_EXAMPLES_H_
