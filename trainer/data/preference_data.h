// Preference pairs read from pre-tokenized JSONL
// ({"prompt_ids": [...], "chosen_ids": [...], "rejected_ids": [...]}), with
// TRL-style truncation. The text formats arrive with the tokenizer.
#ifndef PREFOPT_TRAINER_DATA_PREFERENCE_DATA_H_
#define PREFOPT_TRAINER_DATA_PREFERENCE_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace prefopt::data {

struct PreferencePair {
  std::vector<int32_t> prompt;
  std::vector<int32_t> chosen;    // response tokens only
  std::vector<int32_t> rejected;  // response tokens only
  // Where it came from, for messages: "file:line".
  std::string source;
};

struct TruncationOptions {
  int max_length = 0;         // prompt + response tokens
  int max_prompt_length = 0;  // 0: no separate limit
  TruncationMode mode = KEEP_END;
};

struct PreferenceDataset {
  std::vector<PreferencePair> pairs;
  int64_t dropped_too_long = 0;     // no room for a response after the prompt
  int64_t truncated = 0;            // kept, but shortened
  int64_t identical_responses = 0;  // chosen == rejected (kept; warned)
};

// Reads every file in order. Errors name the file, the 1-based line and the
// field: malformed JSON, a missing or non-integer-array field, an id outside
// [0, vocab_size), an empty prompt or response.
absl::StatusOr<PreferenceDataset> ReadPreferenceJsonl(
    const std::vector<std::string>& files, int vocab_size,
    const TruncationOptions& truncation);

// Applies truncation to one pair: the prompt is cut to max_prompt_length
// (KEEP_END keeps its last tokens, KEEP_START its first), then each response is
// cut at its end so that prompt + response fits max_length. Returns false when
// the prompt leaves no room for a response token (the pair is dropped).
bool TruncatePair(const TruncationOptions& truncation, PreferencePair* pair,
                  bool* was_truncated);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_PREFERENCE_DATA_H_
