// Packs preference pairs into one batch for the model: for each pair, the
// chosen sequence (prompt ++ chosen) then the rejected one (prompt ++
// rejected), back to back, with the response segment of each sequence for the
// output layer.
#ifndef PREFOPT_TRAINER_DATA_PAIR_BATCH_H_
#define PREFOPT_TRAINER_DATA_PAIR_BATCH_H_

#include <vector>

#include "trainer/data/preference_data.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt::data {

struct PairBatch {
  model::PackedBatch packed;
  // 2 per pair: chosen, rejected.
  std::vector<objectives::ResponseSegment> segments;
  int num_pairs() const { return static_cast<int>(segments.size() / 2); }
};

// Rebuilds `out` (reusing its memory) from pairs[indices[0..n)].
void BuildPairBatch(const std::vector<PreferencePair>& pairs,
                    const int* indices, int n, PairBatch* out);

// Tokens of the longest sequence (prompt + longer response) over all pairs.
int MaxSequenceLength(const std::vector<PreferencePair>& pairs);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_PAIR_BATCH_H_
