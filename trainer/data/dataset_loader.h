// The training loop's one entry point for data: JSONL files of any supported
// shape (see text_data.h and examples.h) become one in-memory Dataset.
//
// Each file is read as a stream, line by line (never whole in memory), in
// blocks of lines tokenized in parallel and kept in file order. The first
// non-blank line fixes the file's format (text, conversational or
// pre-tokenized); a line of another format is an error that names it. Text
// and conversational files are tokenized once and cached (token_cache.h);
// pre-tokenized files are parsed directly.
//
// Truncation is TruncateExample's (TRL-like): the prompt is cut to
// max_prompt_length (keeping its end under KEEP_END, TRL's default), then
// each response is cut at its end so that context + prompt + response fits
// max_length. Unlike TRL, which cuts the concatenated sequence, the
// response's tail goes, never the prompt's head, and an example whose prompt
// leaves no room for a response is dropped and counted
// (Dataset::dropped_too_long). Pairs whose chosen and rejected ids are equal
// are kept and counted (Dataset::identical_responses) for a warning.
#ifndef PREFOPT_TRAINER_DATA_DATASET_LOADER_H_
#define PREFOPT_TRAINER_DATA_DATASET_LOADER_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"
#include "trainer/data/examples.h"

namespace prefopt::data {

struct DataOptions {
  int vocab_size = 0;  // the model's; every id must be below it
  TruncationOptions truncation;
  // tokenizer.json, or a folder holding it. Empty: only pre-tokenized files
  // are accepted, and a text file is an error saying a tokenizer is needed.
  std::string tokenizer_path;
  // For conversational files; NONE makes them an error.
  DataConfig::ChatTemplate chat_template = DataConfig::NONE;
  // Where token caches go (created if missing). Empty: next to each data
  // file (TokenCachePath).
  std::string cache_dir;
  // Unpaired data: the run length within which KL completions are paired
  // (AttachKlCompletions; KTO's global batch); 0: no KL completions.
  int kl_chunk = 0;
};

// Reads every file in order into one Dataset of `kind` (unpaired examples
// finished by AttachKlCompletions over all files together). Errors name the
// file, the 1-based line and the field. Notices (cache used, written, stale or
// damaged and rebuilt) go to `log` when it is not null. An unusable cache is
// never an error: the file is tokenized again and the cache rewritten; a
// cache that cannot be written is reported and skipped.
absl::StatusOr<Dataset> LoadDataset(const std::vector<std::string>& files,
                                    ExampleKind kind,
                                    const DataOptions& options,
                                    std::ostream* log);

// DataConfig.tokenizer_path's default: `configured` when set, else
// <model_dir>/tokenizer.json when that file exists, else "".
std::string DefaultTokenizerPath(const std::string& configured,
                                 const std::string& model_dir);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_DATASET_LOADER_H_
