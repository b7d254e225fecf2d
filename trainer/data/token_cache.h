// A binary cache of the tokenized examples of one text data file, so that
// later runs load the ids instead of tokenizing again.
//
// The cache is keyed by a fingerprint of everything the ids depend on (the
// bytes of the data file, tokenizer.json and tokenizer_config.json, the chat
// template, the example kind, the model's vocabulary size, the truncation
// settings and the format version); a cache made for other inputs is stale.
// It is written atomically (temporary file, then rename), so a reader sees a
// complete cache or none, and ends with a CRC-32C of all its bytes, so a
// truncated or damaged file is detected.
//
// Layout, in the machine's byte order (little-endian on x86-64):
//   char[8] "PFTOKC01"; u64 key; u32 example kind; u32 0;
//   u64 examples, dropped_too_long, truncated, identical_responses;
//   per example: u64 line number in the data file; f32 preference_fraction;
//     u32 label (unpaired examples, else 0); u32 sizes of context, prompt,
//     chosen, rejected; then their i32 ids;
//   u32 CRC-32C of every byte before it.
#ifndef PREFOPT_TRAINER_DATA_TOKEN_CACHE_H_
#define PREFOPT_TRAINER_DATA_TOKEN_CACHE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"
#include "trainer/data/examples.h"

namespace prefopt::data {

// What the tokenized examples of a data file depend on.
struct TokenCacheInputs {
  std::string data_file;
  std::string tokenizer_json;
  std::string tokenizer_config;  // need not exist
  DataConfig::ChatTemplate chat_template = DataConfig::NONE;
  ExampleKind kind = ExampleKind::kPreference;
  int vocab_size = 0;
  TruncationOptions truncation;
};

// The cache key of `inputs`; errors name a file that cannot be read.
absl::StatusOr<uint64_t> TokenCacheKey(const TokenCacheInputs& inputs);

// Where the cache of `data_file` lives: `<data_file>.tokcache` next to it when
// `cache_dir` is empty, else `<cache_dir>/<file name>.<8 hex digits of a
// fingerprint of its absolute path>.tokcache` (files of the same name in
// different folders do not share a cache).
std::string TokenCachePath(const std::string& data_file,
                           const std::string& cache_dir);

// Writes `dataset`, the examples of one data file whose sources are
// "<file>:<line>" (unpaired ones with their whole completions, as AddExample
// leaves them), to `path` atomically. The folder must exist.
absl::Status WriteTokenCache(const std::string& path, uint64_t key,
                             const Dataset& dataset);

// Reads the cache at `path`: NotFound when there is none; FailedPrecondition
// when it was made for other inputs (`key`); DataLoss when it is truncated,
// damaged or not a cache. The examples' sources are "<data_file>:<line>".
absl::StatusOr<Dataset> ReadTokenCache(const std::string& path, uint64_t key,
                                       ExampleKind kind,
                                       const std::string& data_file);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_TOKEN_CACHE_H_
