#include "trainer/data/dataset_loader.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "trainer/data/text_data.h"
#include "trainer/data/token_cache.h"
#include "trainer/util/input_file.h"

namespace prefopt::data {
namespace {

// DataLoss naming the first example of a token cache whose ids are not all
// in [0, vocab_size).
absl::Status CheckCachedIds(const Dataset& dataset, int vocab_size,
                            const std::string& cache) {
  for (const Example& ex : dataset.examples) {
    for (const std::vector<int32_t>* ids :
         {&ex.context, &ex.prompt, &ex.chosen, &ex.rejected}) {
      for (int32_t id : *ids) {
        if (id < 0 || id >= vocab_size) {
          return absl::DataLossError(absl::StrCat(
              "invalid token cache ", cache, ": ", ex.source, " has id ", id,
              ", outside the vocabulary [0, ", vocab_size, ")"));
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace fs = std::filesystem;

// Lines (or bytes) read before a block is tokenized: enough to keep every
// thread busy, small enough to bound the memory of a streamed file.
constexpr size_t kBlockLines = 4096;
constexpr size_t kBlockBytes = 16 << 20;

bool IsBlank(const std::string& line) {
  return line.find_first_not_of(" \t\r") == std::string::npos;
}

std::string Where(const std::string& file, int64_t line) {
  return absl::StrCat(file, ":", line);
}

// Opens the data file `file` into `in`.
absl::Status OpenDataFile(const std::string& file, std::ifstream* in) {
  if (absl::Status s = util::CheckInputFile(file); !s.ok()) return s;
  in->open(file, std::ios::binary);
  if (!*in) {
    return absl::NotFoundError(absl::StrCat(file, ": cannot open data file"));
  }
  return absl::OkStatus();
}

// The format of a file: that of its first non-blank line, and that line's
// number; nullopt for a file with no examples.
struct FileFormat {
  LineFormat format;
  int64_t line;
};

absl::StatusOr<std::optional<FileFormat>> PeekFormat(const std::string& file) {
  std::ifstream in;
  if (absl::Status s = OpenDataFile(file, &in); !s.ok()) return s;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (IsBlank(line)) continue;
    const std::string where = Where(file, line_no);
    absl::StatusOr<nlohmann::json> obj = ParseJsonLine(line, where);
    if (!obj.ok()) return obj.status();
    absl::StatusOr<LineFormat> format = DetectLineFormat(*obj, where);
    if (!format.ok()) return format.status();
    return std::optional<FileFormat>(FileFormat{*format, line_no});
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(file, ": read error"));
  return std::optional<FileFormat>();
}

// One line's outcome, computed in parallel and used in file order.
struct LineResult {
  bool blank = false;
  std::optional<LineFormat> format;  // set once the line parsed
  absl::Status status;
  Example example;
};

void ProcessLine(const std::string& line, const std::string& where,
                 LineFormat file_format, ExampleKind kind, int vocab_size,
                 const TextEncoder* encoder, LineResult* result) {
  if (IsBlank(line)) {
    result->blank = true;
    return;
  }
  absl::StatusOr<nlohmann::json> obj = ParseJsonLine(line, where);
  if (!obj.ok()) {
    result->status = obj.status();
    return;
  }
  absl::StatusOr<LineFormat> format = DetectLineFormat(*obj, where);
  if (!format.ok()) {
    result->status = format.status();
    return;
  }
  result->format = *format;
  // A line of another format is reported in file order by the caller.
  if (*format != file_format) return;
  result->example.source = where;
  if (*format == LineFormat::kTokenIds) {
    result->status =
        ParseTokenIdsExample(*obj, kind, vocab_size, where, &result->example);
  } else {
    result->status =
        encoder->Encode(*obj, *format, kind, where, &result->example);
  }
}

// Reads every line of `file`, whose format is `format`, into a Dataset.
absl::StatusOr<Dataset> ReadFile(const std::string& file,
                                 const FileFormat& format, ExampleKind kind,
                                 const DataOptions& options,
                                 const TextEncoder* encoder) {
  std::ifstream in;
  if (absl::Status s = OpenDataFile(file, &in); !s.ok()) return s;
  Dataset ds;
  ds.kind = kind;
  std::vector<std::string> lines(kBlockLines);
  std::vector<std::string> wheres(kBlockLines);
  std::vector<LineResult> results(kBlockLines);
  int64_t line_no = 0;
  bool more = true;
  while (more) {
    size_t n = 0;
    size_t bytes = 0;
    while (n < kBlockLines && bytes < kBlockBytes) {
      if (!std::getline(in, lines[n])) {
        more = false;
        break;
      }
      bytes += lines[n].size();
      wheres[n] = Where(file, line_no + 1 + static_cast<int64_t>(n));
      results[n] = LineResult();
      ++n;
    }
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 0; i < static_cast<int>(n); ++i) {
      ProcessLine(lines[i], wheres[i], format.format, kind, options.vocab_size,
                  encoder, &results[i]);
    }
    for (size_t i = 0; i < n; ++i) {
      LineResult& r = results[i];
      if (r.blank) continue;
      if (r.format.has_value() && *r.format != format.format) {
        return absl::InvalidArgumentError(absl::StrCat(
            wheres[i], ": this line is ", LineFormatName(*r.format),
            " data but the file's first example (line ", format.line, ") is ",
            LineFormatName(format.format),
            "; a file must use one shape throughout"));
      }
      if (!r.status.ok()) return r.status;
      AddExample(std::move(r.example), options.truncation, &ds);
    }
    line_no += static_cast<int64_t>(n);
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(file, ": read error"));
  return ds;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// A text or conversational file: from its token cache when that is valid,
// else tokenized (and the cache rewritten).
absl::StatusOr<Dataset> LoadTextFile(const std::string& file,
                                     const FileFormat& format, ExampleKind kind,
                                     const DataOptions& options,
                                     std::optional<TextEncoder>* encoder,
                                     std::ostream* log) {
  TokenCacheInputs inputs;
  inputs.data_file = file;
  inputs.tokenizer_json = TokenizerJsonPath(options.tokenizer_path);
  inputs.tokenizer_config =
      (fs::path(inputs.tokenizer_json).parent_path() / "tokenizer_config.json")
          .string();
  inputs.chat_template = options.chat_template;
  inputs.kind = kind;
  inputs.vocab_size = options.vocab_size;
  inputs.truncation = options.truncation;
  absl::StatusOr<uint64_t> key = TokenCacheKey(inputs);
  if (!key.ok()) return key.status();
  const std::string cache = TokenCachePath(file, options.cache_dir);

  absl::StatusOr<Dataset> cached = ReadTokenCache(cache, *key, kind, file);
  if (cached.ok()) {
    // The checksum proves the file is whole, not that it is ours: a cache
    // written by anything else must not feed out-of-vocabulary ids to the
    // embedding.
    absl::Status ids = CheckCachedIds(*cached, options.vocab_size, cache);
    if (!ids.ok()) cached = ids;
  }
  if (cached.ok()) {
    if (log != nullptr) {
      *log << "data: " << file << ": " << cached->examples.size()
           << " examples from the token cache " << cache << "\n";
    }
    return cached;
  }
  if (!absl::IsNotFound(cached.status()) && log != nullptr) {
    *log << "data: notice: " << cached.status().message()
         << "; tokenizing again\n";
  }

  if (!encoder->has_value()) {
    absl::StatusOr<TextEncoder> made = TextEncoder::Create(
        options.tokenizer_path, options.chat_template, options.vocab_size);
    if (!made.ok()) return made.status();
    encoder->emplace(*std::move(made));
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Dataset> ds =
      ReadFile(file, format, kind, options, &**encoder);
  if (!ds.ok()) return ds;
  const double seconds = SecondsSince(start);

  std::error_code error;
  fs::create_directories(fs::path(cache).parent_path(), error);
  absl::Status written =
      error ? absl::FailedPreconditionError(
                  absl::StrCat(fs::path(cache).parent_path().string(),
                               ": cannot create the folder: ", error.message()))
            : WriteTokenCache(cache, *key, *ds);
  if (log != nullptr) {
    *log << "data: " << file << ": tokenized " << ds->examples.size()
         << " examples in " << absl::StrFormat("%.2f", seconds) << " s";
    if (written.ok()) {
      *log << ", token cache written to " << cache << "\n";
    } else {
      *log << "\ndata: notice: cannot write the token cache ("
           << written.message() << "); continuing without it\n";
    }
  }
  return ds;
}

}  // namespace

absl::StatusOr<Dataset> LoadDataset(const std::vector<std::string>& files,
                                    ExampleKind kind,
                                    const DataOptions& options,
                                    std::ostream* log) {
  if (options.vocab_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model's vocabulary size must be > 0, got ", options.vocab_size));
  }
  Dataset all;
  all.kind = kind;
  std::optional<TextEncoder> encoder;
  for (const std::string& file : files) {
    absl::StatusOr<std::optional<FileFormat>> format = PeekFormat(file);
    if (!format.ok()) return format.status();
    if (!format->has_value()) continue;
    absl::Status usable = CheckTextRequirements(
        (*format)->format, !options.tokenizer_path.empty(),
        options.chat_template, Where(file, (*format)->line));
    if (!usable.ok()) return usable;
    absl::StatusOr<Dataset> ds =
        (*format)->format == LineFormat::kTokenIds
            ? ReadFile(file, **format, kind, options, nullptr)
            : LoadTextFile(file, **format, kind, options, &encoder, log);
    if (!ds.ok()) return ds.status();
    all.dropped_too_long += ds->dropped_too_long;
    all.truncated += ds->truncated;
    all.identical_responses += ds->identical_responses;
    if (all.examples.empty()) {
      all.examples = std::move(ds->examples);
    } else {
      all.examples.insert(all.examples.end(),
                          std::make_move_iterator(ds->examples.begin()),
                          std::make_move_iterator(ds->examples.end()));
    }
  }
  if (all.examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no usable examples in ", absl::StrJoin(files, ", "), " (",
        all.dropped_too_long,
        " dropped because the prompt leaves no room within max_length)"));
  }
  if (kind == ExampleKind::kUnpaired) {
    AttachKlCompletions(options.kl_chunk, options.truncation, &all.examples);
  }
  return all;
}

std::string DefaultTokenizerPath(const std::string& configured,
                                 const std::string& model_dir) {
  if (!configured.empty() || model_dir.empty()) return configured;
  const std::string path = (fs::path(model_dir) / "tokenizer.json").string();
  std::error_code error;
  return fs::is_regular_file(path, error) ? path : std::string();
}

}  // namespace prefopt::data
