// The precomputed reference (objectives.md §6): one no-grad pass of the frozen
// reference model over the dataset gives each pair's summed response log-probs
// L̃; they are cached in a file keyed by a fingerprint of the reference weights
// and the (truncated) token ids, so later runs reuse them and training holds no
// second model.
#ifndef PREFOPT_TRAINER_REFERENCE_REFERENCE_LOGPS_H_
#define PREFOPT_TRAINER_REFERENCE_REFERENCE_LOGPS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/data/preference_data.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/dpo.h"

namespace prefopt::reference {

struct ReferenceCacheResult {
  std::vector<objectives::PairReference> values;  // one per pair, in order
  std::string cache_path;
  bool loaded_from_cache = false;
  // Why an existing cache file was not used (empty if none existed or it was).
  std::string rebuilt_because;
};

// Progress callback: (pairs done, pairs total).
using ProgressFn = std::function<void(int64_t, int64_t)>;

// Scores every pair with `reference` (a frozen Decoder) in batches of
// `micro_batch_pairs`, or loads the scores from `cache_dir` when a cache with
// the same fingerprint is there. A cache that is truncated, corrupted or of
// another fingerprint is rebuilt (the reason is reported in the result).
absl::StatusOr<ReferenceCacheResult> ComputePairReferences(
    model::Decoder& reference, const std::vector<data::PreferencePair>& pairs,
    int micro_batch_pairs, int output_chunk, const std::string& cache_dir,
    const ProgressFn& progress);

// The cache key: fingerprint of the model's architecture and weights and of
// every pair's token ids.
uint64_t ReferenceFingerprint(const model::Decoder& reference,
                              const std::vector<data::PreferencePair>& pairs);

}  // namespace prefopt::reference

#endif  // PREFOPT_TRAINER_REFERENCE_REFERENCE_LOGPS_H_
