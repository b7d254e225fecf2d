// The precomputed reference (docs/objectives.md §6): one no-grad pass of the
// frozen reference model over the dataset gives every response's summed
// log-prob L̃ (and, when asked, its per-token ℓ̃_t). The values are cached in a
// file keyed by a fingerprint of the reference weights, the token ids and the
// options, so later runs reuse them and training holds no second model.
#ifndef PREFOPT_TRAINER_REFERENCE_REFERENCE_LOGPS_H_
#define PREFOPT_TRAINER_REFERENCE_REFERENCE_LOGPS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "trainer/data/examples.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/reference_values.h"

namespace prefopt::reference {

struct ReferenceOptions {
  bool token_logps = false;     // also keep ℓ̃_t of every response token
  bool include_context = true;  // false: score without the examples' context
  int micro_batch_examples = 1;
  int output_chunk = 0;  // objectives::OutputChunkRows' `configured`
  // Data-parallel ranks split the examples and exchange their values; only
  // rank 0 writes the cache file. Null: one process.
  comm::Communicator* comm = nullptr;
};

struct ReferenceCacheResult {
  objectives::ReferenceValues values;
  std::string cache_path;
  bool loaded_from_cache = false;
  // Why an existing cache file was not used (empty if none existed or it was).
  std::string rebuilt_because;
};

// Progress callback: (examples done, examples total).
using ProgressFn = std::function<void(int64_t, int64_t)>;

// Scores every example with `reference` (a frozen Decoder), or loads the
// scores from `cache_dir` when a cache with the same fingerprint is there. A
// cache that is truncated, corrupted or of another fingerprint is rebuilt (the
// reason is in the result). The file is written atomically.
absl::StatusOr<ReferenceCacheResult> ComputeReferenceValues(
    model::Decoder& reference, const std::vector<data::Example>& examples,
    const ReferenceOptions& options, const std::string& cache_dir,
    const ProgressFn& progress);

// The values a cache file's `bytes` hold for `examples`, checked as
// ComputeReferenceValues checks a cache before using it: FailedPrecondition
// when it was made for another `key`, DataLoss when it is truncated, damaged,
// laid out for other examples or holds a non-finite log-prob.
absl::StatusOr<objectives::ReferenceValues> ParseReferenceCache(
    const std::string& bytes, uint64_t key,
    const std::vector<data::Example>& examples, bool token_logps);

// The cache key: fingerprint of the model's architecture and weights, every
// example's token ids and the options that change the values.
uint64_t ReferenceFingerprint(const model::Decoder& reference,
                              const std::vector<data::Example>& examples,
                              const ReferenceOptions& options);

}  // namespace prefopt::reference

#endif  // PREFOPT_TRAINER_REFERENCE_REFERENCE_LOGPS_H_
