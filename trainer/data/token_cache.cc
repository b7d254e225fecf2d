#include "trainer/data/token_cache.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/io/atomic_file.h"
#include "trainer/util/crc32c.h"
#include "trainer/util/fingerprint.h"
#include "trainer/util/input_file.h"

namespace prefopt::data {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'P', 'F', 'T', 'O', 'K', 'C', '0', '1'};
// Bumped whenever the layout or the tokenization conventions change, so that
// caches of older builds are stale rather than misread.
// 2: TRL 1.x tokenization (BOS on the prompt, joint prompt + response split).
constexpr uint64_t kFormatVersion = 2;

struct Header {
  char magic[8];
  uint64_t key;
  uint32_t kind;
  uint32_t reserved;
  uint64_t examples;
  uint64_t dropped_too_long;
  uint64_t truncated;
  uint64_t identical_responses;
};
static_assert(sizeof(Header) == 56, "the header has no padding");

struct RecordHeader {
  uint64_t line;
  float preference_fraction;
  uint32_t label;     // unpaired examples' label, 0 or 1
  uint32_t sizes[4];  // context, prompt, chosen, rejected
};
static_assert(sizeof(RecordHeader) == 32, "the record header has no padding");

// The line number of a source "<file>:<line>"; 0 when it has none.
uint64_t SourceLine(const std::string& source) {
  const size_t colon = source.rfind(':');
  uint64_t line = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(source).substr(colon + 1), &line)) {
    return 0;
  }
  return line;
}

// Buffers bytes for an AtomicFileWriter and keeps their CRC.
class CacheWriter {
 public:
  explicit CacheWriter(io::AtomicFileWriter writer)
      : writer_(std::move(writer)) {}

  absl::Status Write(const void* data, size_t n) {
    crc_ = util::Crc32c(data, n, crc_);
    buffer_.append(static_cast<const char*>(data), n);
    if (buffer_.size() >= kFlushBytes) return Flush();
    return absl::OkStatus();
  }

  absl::Status Finish() {
    const uint32_t crc = crc_;
    buffer_.append(reinterpret_cast<const char*>(&crc), sizeof(crc));
    absl::Status s = Flush();
    if (!s.ok()) return s;
    return writer_.Commit();
  }

 private:
  static constexpr size_t kFlushBytes = 1 << 20;

  absl::Status Flush() {
    absl::Status s = writer_.Append(buffer_);
    buffer_.clear();
    return s;
  }

  io::AtomicFileWriter writer_;
  std::string buffer_;
  uint32_t crc_ = 0;
};

// Reads a cache file sequentially, keeping the CRC of what it read and never
// reading past the end (sizes read from the file are checked against what is
// left of it before anything is allocated).
class CacheReader {
 public:
  CacheReader(std::ifstream in, uint64_t size)
      : in_(std::move(in)), left_(size) {}

  bool Read(void* data, size_t n) {
    if (n > left_) return false;
    if (!in_.read(static_cast<char*>(data), static_cast<std::streamsize>(n))) {
      return false;
    }
    left_ -= n;
    crc_ = util::Crc32c(data, n, crc_);
    return true;
  }

  bool ReadIds(uint32_t count, std::vector<int32_t>* ids) {
    if (static_cast<uint64_t>(count) * sizeof(int32_t) > left_) return false;
    ids->resize(count);
    return Read(ids->data(), count * sizeof(int32_t));
  }

  uint64_t left() const { return left_; }
  uint32_t crc() const { return crc_; }

 private:
  std::ifstream in_;
  uint64_t left_;
  uint32_t crc_ = 0;
};

absl::Status Damaged(const std::string& path, std::string_view why) {
  return absl::DataLossError(absl::StrCat(
      path,
      ": damaged token cache: ", absl::string_view(why.data(), why.size())));
}

}  // namespace

absl::StatusOr<uint64_t> TokenCacheKey(const TokenCacheInputs& inputs) {
  util::Fingerprinter fp;
  fp.UpdateValue(kFormatVersion);
  for (const std::string* file : {&inputs.data_file, &inputs.tokenizer_json}) {
    absl::StatusOr<uint64_t> bytes = util::FingerprintFile(*file);
    if (!bytes.ok()) return bytes.status();
    fp.UpdateValue(*bytes);
  }
  std::error_code error;
  const bool has_config = fs::exists(inputs.tokenizer_config, error);
  fp.UpdateValue(has_config);
  if (has_config) {
    absl::StatusOr<uint64_t> bytes =
        util::FingerprintFile(inputs.tokenizer_config);
    if (!bytes.ok()) return bytes.status();
    fp.UpdateValue(*bytes);
  }
  fp.UpdateValue(static_cast<int32_t>(inputs.chat_template));
  fp.UpdateValue(static_cast<int32_t>(inputs.kind));
  fp.UpdateValue(static_cast<int32_t>(inputs.vocab_size));
  fp.UpdateValue(static_cast<int32_t>(inputs.truncation.max_length));
  fp.UpdateValue(static_cast<int32_t>(inputs.truncation.max_prompt_length));
  fp.UpdateValue(static_cast<int32_t>(inputs.truncation.mode));
  return fp.Value();
}

std::string TokenCachePath(const std::string& data_file,
                           const std::string& cache_dir) {
  if (cache_dir.empty()) return data_file + ".tokcache";
  std::error_code error;
  fs::path absolute = fs::absolute(data_file, error);
  if (error) absolute = data_file;
  util::Fingerprinter fp;
  fp.Update(absolute.lexically_normal().string());
  const std::string tag =
      absl::StrFormat("%08x", static_cast<uint32_t>(fp.Value()));
  return (fs::path(cache_dir) /
          absl::StrCat(fs::path(data_file).filename().string(), ".", tag,
                       ".tokcache"))
      .string();
}

absl::Status WriteTokenCache(const std::string& path, uint64_t key,
                             const Dataset& dataset) {
  absl::StatusOr<io::AtomicFileWriter> file =
      io::AtomicFileWriter::Create(path);
  if (!file.ok()) return file.status();
  CacheWriter out(*std::move(file));
  Header header = {};
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.key = key;
  header.kind = static_cast<uint32_t>(dataset.kind);
  header.examples = dataset.examples.size();
  header.dropped_too_long = static_cast<uint64_t>(dataset.dropped_too_long);
  header.truncated = static_cast<uint64_t>(dataset.truncated);
  header.identical_responses =
      static_cast<uint64_t>(dataset.identical_responses);
  absl::Status s = out.Write(&header, sizeof(header));
  for (const Example& ex : dataset.examples) {
    if (!s.ok()) return s;
    const std::vector<int32_t>* parts[4] = {&ex.context, &ex.prompt, &ex.chosen,
                                            &ex.rejected};
    RecordHeader record = {};
    record.line = SourceLine(ex.source);
    record.preference_fraction = ex.preference_fraction;
    record.label = ex.label ? 1 : 0;
    for (int i = 0; i < 4; ++i) {
      record.sizes[i] = static_cast<uint32_t>(parts[i]->size());
    }
    s = out.Write(&record, sizeof(record));
    for (const std::vector<int32_t>* part : parts) {
      if (s.ok() && !part->empty()) {
        s = out.Write(part->data(), part->size() * sizeof(int32_t));
      }
    }
  }
  if (!s.ok()) return s;
  return out.Finish();
}

absl::StatusOr<Dataset> ReadTokenCache(const std::string& path, uint64_t key,
                                       ExampleKind kind,
                                       const std::string& data_file) {
  if (absl::Status s = util::CheckInputFile(path); !s.ok()) return s;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string message = absl::StrCat(
        path, ": cannot open the token cache: ", std::strerror(error));
    if (error == ENOENT) return absl::NotFoundError(message);
    return absl::FailedPreconditionError(message);
  }
  std::error_code error;
  const uint64_t size = fs::file_size(path, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot stat the token cache: ", error.message()));
  }
  CacheReader reader(std::move(in), size);
  Header header;
  if (!reader.Read(&header, sizeof(header))) {
    return Damaged(path, absl::StrCat("truncated (", size, " bytes)"));
  }
  if (std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0) {
    return Damaged(path, "not a token cache (wrong magic bytes)");
  }
  if (header.key != key || header.kind != static_cast<uint32_t>(kind)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path,
        ": stale token cache: the data file, tokenizer, chat template or "
        "truncation settings changed since it was written"));
  }
  Dataset ds;
  ds.kind = kind;
  ds.dropped_too_long = static_cast<int64_t>(header.dropped_too_long);
  ds.truncated = static_cast<int64_t>(header.truncated);
  ds.identical_responses = static_cast<int64_t>(header.identical_responses);
  // Each example takes at least a record header, which bounds the count
  // before anything is reserved.
  if (header.examples > reader.left() / sizeof(RecordHeader)) {
    return Damaged(path, "truncated (fewer bytes than its examples need)");
  }
  ds.examples.resize(header.examples);
  for (Example& ex : ds.examples) {
    RecordHeader record;
    if (!reader.Read(&record, sizeof(record)) ||
        !reader.ReadIds(record.sizes[0], &ex.context) ||
        !reader.ReadIds(record.sizes[1], &ex.prompt) ||
        !reader.ReadIds(record.sizes[2], &ex.chosen) ||
        !reader.ReadIds(record.sizes[3], &ex.rejected)) {
      return Damaged(path, "truncated");
    }
    ex.preference_fraction = record.preference_fraction;
    ex.label = record.label != 0;
    ex.source = absl::StrCat(data_file, ":", record.line);
  }
  const uint32_t computed = reader.crc();
  uint32_t stored = 0;
  if (!reader.Read(&stored, sizeof(stored))) {
    return Damaged(path, "truncated (no checksum)");
  }
  if (stored != computed) {
    return Damaged(path, absl::StrFormat("checksum mismatch (stored %08x, "
                                         "computed %08x)",
                                         stored, computed));
  }
  if (reader.left() != 0) {
    return Damaged(path, absl::StrCat(reader.left(),
                                      " unexpected bytes after the checksum"));
  }
  return ds;
}

}  // namespace prefopt::data
