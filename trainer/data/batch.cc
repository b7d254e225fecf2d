#include "trainer/data/batch.h"

#include <algorithm>

namespace prefopt::data {

void BuildBatch(const std::vector<Example>& examples, const int* indices, int n,
                bool include_context, Batch* out, int only_response) {
  out->packed.Clear();
  out->segments.clear();
  std::vector<int32_t>& prefix = out->prefix_scratch;
  for (int i = 0; i < n; ++i) {
    const Example& ex = examples[indices[i]];
    prefix.clear();
    if (include_context) {
      prefix.insert(prefix.end(), ex.context.begin(), ex.context.end());
    }
    prefix.insert(prefix.end(), ex.prompt.begin(), ex.prompt.end());
    for (int r = 0; r < ex.num_responses(); ++r) {
      if (only_response >= 0 && r != only_response) continue;
      const std::vector<int32_t>& response = ex.response(r);
      const int start = out->packed.rows();
      out->packed.AddSequence(prefix, response);
      // Row start + |prefix| - 1 predicts the first response token.
      out->segments.push_back({start + static_cast<int>(prefix.size()) - 1,
                               static_cast<int>(response.size())});
    }
  }
}

int MaxSequenceLength(const std::vector<Example>& examples) {
  size_t longest = 0;
  for (const Example& ex : examples) {
    longest =
        std::max(longest, ex.context.size() + ex.prompt.size() +
                              std::max(ex.chosen.size(), ex.rejected.size()));
  }
  return static_cast<int>(longest);
}

}  // namespace prefopt::data
