#include "trainer/data/pair_batch.h"

#include <algorithm>

namespace prefopt::data {
namespace {

void AddSequence(const std::vector<int32_t>& prompt,
                 const std::vector<int32_t>& response, PairBatch* out) {
  const int start = out->packed.rows();
  out->packed.AddSequence(prompt, response);
  // Row start + |prompt| - 1 predicts the first response token.
  out->segments.push_back({start + static_cast<int>(prompt.size()) - 1,
                           static_cast<int>(response.size())});
}

}  // namespace

void BuildPairBatch(const std::vector<PreferencePair>& pairs,
                    const int* indices, int n, PairBatch* out) {
  out->packed.Clear();
  out->segments.clear();
  for (int i = 0; i < n; ++i) {
    const PreferencePair& pair = pairs[indices[i]];
    AddSequence(pair.prompt, pair.chosen, out);
    AddSequence(pair.prompt, pair.rejected, out);
  }
}

int MaxSequenceLength(const std::vector<PreferencePair>& pairs) {
  size_t longest = 0;
  for (const PreferencePair& p : pairs) {
    longest = std::max(longest, p.prompt.size() + std::max(p.chosen.size(),
                                                           p.rejected.size()));
  }
  return static_cast<int>(longest);
}

}  // namespace prefopt::data
