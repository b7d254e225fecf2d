// Packs examples into one batch for a model: each response of each example
// becomes one sequence ([context ++] prompt ++ response), back to back, with
// the response segment of each sequence for the output layer. Pairs give two
// sequences per example (chosen, rejected), demonstrations one.
#ifndef PREFOPT_TRAINER_DATA_BATCH_H_
#define PREFOPT_TRAINER_DATA_BATCH_H_

#include <vector>

#include "trainer/data/examples.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::data {

struct Batch {
  model::PackedBatch packed;
  // One per sequence, in order: example 0's responses, example 1's, ...
  std::vector<objectives::ResponseSegment> segments;
  // Reused by BuildBatch so that building a batch allocates nothing in the
  // steady state.
  std::vector<int32_t> prefix_scratch;
};

// Rebuilds `out` (reusing its memory) from examples[indices[0..n)]. With
// include_context false the examples' context is left out (PRIOR's reference).
// With only_response >= 0 each example gives only that response (KTO scores
// its completions and its KL completions in separate passes).
void BuildBatch(const std::vector<Example>& examples, const int* indices, int n,
                bool include_context, Batch* out, int only_response = -1);

// Tokens of the longest sequence over all examples (with context).
int MaxSequenceLength(const std::vector<Example>& examples);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_BATCH_H_
