// Reference-model log-probs of every response of a dataset (docs/objectives.md
// §6): the summed L̃ of each response, and, for objectives that need them, the
// per-token ℓ̃_t. Response j of example i is entry first_response[i] + j.
#ifndef PREFOPT_TRAINER_OBJECTIVES_REFERENCE_VALUES_H_
#define PREFOPT_TRAINER_OBJECTIVES_REFERENCE_VALUES_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace prefopt::objectives {

struct ReferenceValues {
  std::vector<int64_t> first_response;  // per example
  std::vector<double> sequence_logp;    // per response: L̃
  // Per response, the offset of its tokens in token_logp; empty when only
  // sums were computed.
  std::vector<int64_t> token_offset;
  std::vector<float> token_logp;

  double SequenceLogp(int example, int response) const {
    return sequence_logp[first_response[example] + response];
  }
  bool has_tokens() const { return !token_offset.empty(); }
  // ℓ̃_t of one response's tokens (requires has_tokens()).
  absl::Span<const float> TokenLogps(int example, int response) const {
    const int64_t r = first_response[example] + response;
    const int64_t end = r + 1 < static_cast<int64_t>(token_offset.size())
                            ? token_offset[r + 1]
                            : static_cast<int64_t>(token_logp.size());
    return absl::MakeConstSpan(token_logp.data() + token_offset[r],
                               end - token_offset[r]);
  }
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_REFERENCE_VALUES_H_
