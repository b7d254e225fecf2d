#include "trainer/checkpoint/checkpoint.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "trainer/checkpoint/fs_util.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/io/atomic_file.h"
#include "trainer/io/safetensors.h"
#include "trainer/util/crc32c.h"

namespace prefopt::checkpoint {
namespace {

constexpr char kCheckpointsDir[] = "checkpoints";
constexpr char kComplete[] = "COMPLETE";
constexpr char kManifest[] = "manifest.textproto";
constexpr char kModelFile[] = "model.safetensors";
constexpr char kExtraFile[] = "extra.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kRoleModel[] = "model";
constexpr char kRoleM[] = "optimizer_m";
constexpr char kRoleV[] = "optimizer_v";
constexpr char kStepPrefix[] = "step_";
constexpr char kTempPrefix[] = ".tmp_step_";
constexpr char kTrashPrefix[] = ".trash_step_";
constexpr char kCompleteKey[] = "manifest_crc32c: 0x";

std::string Hex32(uint32_t v) { return absl::StrFormat("0x%08x", v); }

std::string CheckpointsRoot(const std::string& run_dir) {
  return run_dir + "/" + kCheckpointsDir;
}

std::string TempDirName(int64_t step, const std::string& writer_id) {
  return absl::StrCat(kTempPrefix, step, "_", writer_id);
}

std::string FragmentName(int rank, int world_size) {
  return absl::StrCat("rank", rank, "-of-", world_size, ".fragment.textproto");
}

// The N of "<prefix><N>" followed by the end of `name` or by `stop`; the rest
// after `stop` goes to `*rest`.
std::optional<int64_t> ParseStep(const std::string& name,
                                 const std::string& prefix, char stop,
                                 std::string* rest) {
  if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  size_t i = prefix.size();
  const size_t digits_begin = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  if (i == digits_begin || i - digits_begin > 18) return std::nullopt;
  if (i < name.size()) {
    if (stop == '\0' || name[i] != stop) return std::nullopt;
    if (rest != nullptr) *rest = name.substr(i + 1);
  } else if (stop != '\0') {
    return std::nullopt;
  }
  return std::strtoll(name.c_str() + digits_begin, nullptr, 10);
}

std::optional<int64_t> ParseStepDir(const std::string& name) {
  return ParseStep(name, kStepPrefix, '\0', nullptr);
}

std::string BaseName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string HfArchitecture(const io::ModelSpec& spec) {
  if (!spec.hf_architecture.empty()) return spec.hf_architecture;
  switch (spec.arch) {
    case io::ModelSpec::Arch::kLlama:
      return "LlamaForCausalLM";
    case io::ModelSpec::Arch::kQwen2:
      return "Qwen2ForCausalLM";
    case io::ModelSpec::Arch::kGpt2:
      break;
  }
  return "GPT2LMHeadModel";
}

const std::string& ProcessWriterId() {
  static const std::string* id = new std::string(NewWriterId());
  return *id;
}

std::string WriterIdOf(const CheckpointContents& c) {
  return c.writer_id.empty() ? ProcessWriterId() : c.writer_id;
}

// ---- text format ----

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) {
      first_ = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
    }
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

std::string ToText(const google::protobuf::Message& message) {
  google::protobuf::TextFormat::Printer printer;
  printer.SetUseUtf8StringEscaping(true);
  std::string text;
  printer.PrintToString(message, &text);
  return text;
}

absl::Status ParseText(const std::string& text, const std::string& path,
                       google::protobuf::Message* message) {
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, message)) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid ",
                                            message->GetTypeName(),
                                            " text proto: ", errors.first()));
  }
  return absl::OkStatus();
}

// ---- writing ----

// A tensor to write with its manifest entry (role, hf_transposed and flat
// range already set).
struct PendingTensor {
  io::TensorToWrite tensor;
  TensorEntry entry;
};

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Writes `tensors` as the fp32 safetensors file `dir`/`file` and records the
// file and its tensors (with CRC-32C and byte offsets) in `fragment`.
absl::Status WriteTensorFile(const std::string& dir, const std::string& file,
                             int rank, std::vector<PendingTensor> tensors,
                             CheckpointManifest* fragment) {
  const std::string path = dir + "/" + file;
  std::vector<io::TensorToWrite> to_write;
  for (PendingTensor& p : tensors) {
    const size_t bytes = static_cast<size_t>(NumElements(p.tensor.shape)) * 4;
    p.entry.set_name(p.tensor.name);
    p.entry.set_file(file);
    p.entry.set_dtype("F32");
    for (int64_t d : p.tensor.shape) p.entry.add_shape(d);
    p.entry.set_size_bytes(bytes);
    // The bytes as stored: WriteSafetensors writes F32 data unchanged.
    p.entry.set_crc32c(util::Crc32c(p.tensor.data, bytes));
    p.entry.set_shard_rank(rank);
    to_write.push_back(p.tensor);
  }
  if (absl::Status s = io::WriteSafetensors(path, to_write, io::DType::kF32,
                                            {{"format", "pt"}});
      !s.ok()) {
    return s;
  }
  // The data section ends the file, so it starts at size - its length.
  absl::StatusOr<io::SafetensorsFile> written = io::SafetensorsFile::Open(path);
  if (!written.ok()) return written.status();
  absl::StatusOr<uint64_t> size = internal::FileSize(path);
  if (!size.ok()) return size.status();
  size_t data_bytes = 0;
  for (const io::TensorInfo& info : written->tensors()) {
    data_bytes = std::max(data_bytes, info.end);
  }
  const uint64_t data_start = *size - data_bytes;
  for (PendingTensor& p : tensors) {
    const io::TensorInfo* info = written->Find(p.tensor.name);
    p.entry.set_offset_bytes(data_start + info->begin);
    *fragment->add_tensors() = std::move(p.entry);
  }
  FileEntry* entry = fragment->add_files();
  entry->set_name(file);
  entry->set_size_bytes(*size);
  entry->set_rank(rank);
  return absl::OkStatus();
}

// Records the non-tensor file `dir`/`file` with its size and CRC-32C.
absl::Status AddPlainFile(const std::string& dir, const std::string& file,
                          int rank, CheckpointManifest* fragment) {
  absl::StatusOr<std::string> contents = internal::ReadFile(dir + "/" + file);
  if (!contents.ok()) return contents.status();
  FileEntry* entry = fragment->add_files();
  entry->set_name(file);
  entry->set_size_bytes(contents->size());
  entry->set_rank(rank);
  entry->set_crc32c(util::Crc32c(contents->data(), contents->size()));
  return absl::OkStatus();
}

bool ValidWriterId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '-';
    if (!ok) return false;
  }
  return true;
}

absl::Status ValidateContents(const CheckpointContents& c) {
  const std::string what =
      absl::StrCat("saving checkpoint step ", c.metadata.step(), ": ");
  if (c.metadata.step() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, "negative step"));
  }
  if (c.world_size < 1 || c.rank < 0 || c.rank >= c.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "rank ", c.rank, " of world size ", c.world_size,
                     " is out of range"));
  }
  if (c.world_size > 1 && c.writer_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     "a multi-rank save needs a writer_id shared by all ranks "
                     "(NewWriterId() on rank 0, broadcast)"));
  }
  if (!ValidWriterId(WriterIdOf(c))) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "writer_id '", c.writer_id,
                     "' must be 1-64 characters from [A-Za-z0-9-]"));
  }
  if (c.layout == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "no parameter layout given"));
  }
  if (c.rank == 0 && (c.spec == nullptr || c.params == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "rank 0 must pass the model spec and parameters"));
  }
  if (c.optimizer.has_value()) {
    const OptimizerShard& o = *c.optimizer;
    if (o.range.begin > o.range.end || o.range.end > c.layout->total()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, "rank ", c.rank, "'s optimizer range [", o.range.begin, ", ",
          o.range.end, ") is not within the parameter buffer of ",
          c.layout->total(), " floats"));
    }
    if (o.range.size() > 0 &&
        (o.exp_avg == nullptr || o.exp_avg_sq == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, "rank ", c.rank, "'s optimizer shard has no moment data"));
    }
  }
  return absl::OkStatus();
}

// ---- reading ----

// Checks that `ranges` cover `want` exactly once, naming `what` in errors.
absl::Status CheckCovers(std::vector<FlatRange> ranges, FlatRange want,
                         const std::string& what) {
  std::sort(
      ranges.begin(), ranges.end(),
      [](const FlatRange& a, const FlatRange& b) { return a.begin < b.begin; });
  size_t covered = want.begin;
  for (const FlatRange& r : ranges) {
    if (r.size() == 0 || r.end <= want.begin || r.begin >= want.end) continue;
    const size_t begin = std::max(r.begin, want.begin);
    if (begin > covered) {
      return absl::DataLossError(absl::StrCat(what, ": floats [", covered, ", ",
                                              begin, ") are in no shard"));
    }
    if (begin < covered) {
      return absl::DataLossError(absl::StrCat(
          what, ": shard [", r.begin, ", ", r.end,
          ") overlaps the shards before it (which reach ", covered, ")"));
    }
    covered = std::min(r.end, want.end);
  }
  if (covered < want.end) {
    return absl::DataLossError(absl::StrCat(what, ": floats [", covered, ", ",
                                            want.end, ") are in no shard"));
  }
  return absl::OkStatus();
}

bool IsOptimizerRole(const std::string& role) {
  return role == kRoleM || role == kRoleV;
}

// The structural rules every manifest obeys (checked when writing and when
// reading). `prefix` starts error messages.
absl::Status CheckManifest(const CheckpointManifest& m,
                           const std::string& prefix) {
  auto error = [&](const std::string& message) {
    return absl::DataLossError(absl::StrCat(prefix, message));
  };
  if (m.format_version() != kFormatVersion) {
    return error(absl::StrCat("format_version '", m.format_version(),
                              "' is not supported (this build reads '",
                              kFormatVersion, "')"));
  }
  // The run metadata is used as it is (a negative optimizer_step made
  // AdamW's bias correction NaN), and a manifest edited by hand may carry a
  // recomputed CRC-32C: every number is checked against its range.
  const auto field_error = [&](absl::string_view field, int64_t value,
                               absl::string_view range) {
    return error(absl::StrCat(kManifest, ": field '", field, "' must be ",
                              range, ", got ", value));
  };
  if (m.step() < 0) return field_error("step", m.step(), ">= 0");
  if (m.optimizer_step() < 0 || m.optimizer_step() > m.step()) {
    return field_error("optimizer_step", m.optimizer_step(),
                       absl::StrCat("in [0, step = ", m.step(),
                                    "] (AdamW updates once per step at most)"));
  }
  if (m.metrics_lines() < 0) {
    return field_error("metrics_lines", m.metrics_lines(), ">= 0");
  }
  if (m.world_size() < 1) {
    return field_error("world_size", m.world_size(), ">= 1");
  }
  if (m.zero_stage() != 0 && m.zero_stage() != 1) {
    return field_error("zero_stage", m.zero_stage(), "0 or 1");
  }
  const DataPosition& data = m.data();
  const std::pair<const char*, int64_t> counts[] = {
      {"data.epoch", data.epoch()},
      {"data.batches_per_epoch", data.batches_per_epoch()},
      {"data.num_examples", data.num_examples()},
      {"data.global_batch_size", data.global_batch_size()},
      {"data.examples_seen", data.examples_seen()}};
  for (const auto& [field, value] : counts) {
    if (value < 0) return field_error(field, value, ">= 0");
  }
  if (data.next_batch() < 0 ||
      (data.next_batch() > 0 &&
       data.next_batch() >= data.batches_per_epoch())) {
    return field_error("data.next_batch", data.next_batch(),
                       absl::StrCat("in [0, data.batches_per_epoch = ",
                                    data.batches_per_epoch(), ")"));
  }
  std::set<std::string> files;
  for (const FileEntry& f : m.files()) {
    if (f.name().empty() || f.name().find('/') != std::string::npos ||
        f.name() == kManifest || f.name() == kComplete ||
        !files.insert(f.name()).second) {
      return error(absl::StrCat("file name '", f.name(),
                                "' is invalid or listed twice"));
    }
    if (f.rank() < 0 || f.rank() >= m.world_size()) {
      return error(absl::StrCat(
          kManifest, ": file ", f.name(), ": field 'rank' must be in [0, ",
          "world_size = ", m.world_size(), "), got ", f.rank()));
    }
  }
  std::set<std::pair<std::string, std::string>> tensors;
  std::vector<FlatRange> m_ranges, v_ranges;
  for (const TensorEntry& t : m.tensors()) {
    const std::string where =
        absl::StrCat("tensor ", t.name(), " in ", t.file(), ": ");
    if (files.count(t.file()) == 0) {
      return error(absl::StrCat(where, "the file is not listed"));
    }
    if (!tensors.insert({t.file(), t.name()}).second) {
      return error(absl::StrCat(where, "listed twice"));
    }
    if (t.dtype() != "F32") {
      return error(absl::StrCat(where, "dtype ", t.dtype(), ", expected F32"));
    }
    const std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    uint64_t bytes = 4;
    bool too_large = false;
    for (int64_t d : shape) {
      if (d < 0) return error(absl::StrCat(where, "negative dimension"));
      too_large |=
          __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes);
    }
    if (too_large || t.size_bytes() != bytes) {
      return error(absl::StrCat(where, "size_bytes ", t.size_bytes(),
                                " does not match shape ",
                                io::ShapeString(shape)));
    }
    if (t.shard_rank() < 0 || t.shard_rank() >= m.world_size()) {
      return error(absl::StrCat(
          kManifest, ": ", where, "field 'shard_rank' must be in [0, ",
          "world_size = ", m.world_size(), "), got ", t.shard_rank()));
    }
    if (t.role() == kRoleModel &&
        (t.flat_begin() > t.flat_end() || t.flat_end() > m.flat_param_count() ||
         t.flat_end() - t.flat_begin() != bytes / 4)) {
      return error(
          absl::StrCat(kManifest, ": ", where, "field 'flat_end': the range [",
                       t.flat_begin(), ", ", t.flat_end(),
                       ") does not hold its ", bytes / 4, " floats within the ",
                       m.flat_param_count(), "-float parameter buffer"));
    }
    if (IsOptimizerRole(t.role())) {
      const FlatRange r{t.flat_begin(), t.flat_end()};
      if (r.begin > r.end || r.end > m.flat_param_count() ||
          shape.size() != 1 || static_cast<uint64_t>(shape[0]) != r.size()) {
        return error(absl::StrCat(where, "flat range [", r.begin, ", ", r.end,
                                  ") does not fit shape ",
                                  io::ShapeString(shape), " within ",
                                  m.flat_param_count(), " floats"));
      }
      (t.role() == kRoleM ? m_ranges : v_ranges).push_back(r);
    }
  }
  if (!m_ranges.empty() || !v_ranges.empty()) {
    const FlatRange all{0, static_cast<size_t>(m.flat_param_count())};
    if (absl::Status s = CheckCovers(m_ranges, all, "optimizer exp_avg");
        !s.ok()) {
      return error(std::string(s.message()));
    }
    if (absl::Status s = CheckCovers(v_ranges, all, "optimizer exp_avg_sq");
        !s.ok()) {
      return error(std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

// A checkpoint folder whose marker, manifest and file sizes have been
// checked; tensors are checked as they are read.
class CheckpointReader {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(
      const std::string& dir);

  const CheckpointManifest& manifest() const { return manifest_; }

  // The stored bytes of `entry` (one of manifest().tensors()), after checking
  // its file's header against the manifest and its CRC-32C.
  absl::StatusOr<const uint8_t*> Tensor(const TensorEntry& entry);

  absl::Status Error(absl::StatusCode code, const std::string& message) const {
    return absl::Status(code, absl::StrCat(prefix_, message));
  }

 private:
  struct OpenFile {
    io::SafetensorsFile file;
    uint64_t data_start;
  };

  explicit CheckpointReader(std::string dir)
      : dir_(std::move(dir)),
        prefix_(absl::StrCat("checkpoint ", dir_, ": ")) {}

  std::string dir_;
  std::string prefix_;
  CheckpointManifest manifest_;
  std::map<std::string, std::unique_ptr<OpenFile>> files_;
};

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(
    const std::string& dir) {
  std::unique_ptr<CheckpointReader> r(new CheckpointReader(dir));
  absl::StatusOr<std::string> marker =
      internal::ReadFile(dir + "/" + kComplete);
  if (!marker.ok()) {
    if (absl::IsNotFound(marker.status())) {
      return r->Error(absl::StatusCode::kNotFound,
                      "no COMPLETE marker (the save did not finish)");
    }
    return r->Error(marker.status().code(),
                    std::string(marker.status().message()));
  }
  const size_t key = marker->find(kCompleteKey);
  if (key == std::string::npos) {
    return r->Error(absl::StatusCode::kDataLoss,
                    "COMPLETE does not hold the manifest's CRC-32C");
  }
  const uint32_t want_crc = static_cast<uint32_t>(std::strtoul(
      marker->c_str() + key + sizeof(kCompleteKey) - 1, nullptr, 16));

  absl::StatusOr<std::string> text = internal::ReadFile(dir + "/" + kManifest);
  if (!text.ok()) {
    return r->Error(absl::StatusCode::kDataLoss,
                    std::string(text.status().message()));
  }
  const uint32_t crc = util::Crc32c(text->data(), text->size());
  if (crc != want_crc) {
    return r->Error(
        absl::StatusCode::kDataLoss,
        absl::StrCat(kManifest, ": CRC32C mismatch (COMPLETE says ",
                     Hex32(want_crc), ", computed ", Hex32(crc), ")"));
  }
  if (absl::Status s = ParseText(*text, kManifest, &r->manifest_); !s.ok()) {
    return r->Error(absl::StatusCode::kDataLoss, std::string(s.message()));
  }
  if (absl::Status s = CheckManifest(r->manifest_, r->prefix_); !s.ok()) {
    return s;
  }
  const std::optional<int64_t> dir_step = ParseStepDir(BaseName(dir));
  if (dir_step.has_value() && *dir_step != r->manifest_.step()) {
    return r->Error(
        absl::StatusCode::kDataLoss,
        absl::StrCat("the manifest is for step ", r->manifest_.step()));
  }

  std::set<std::string> tensor_files;
  for (const TensorEntry& t : r->manifest_.tensors())
    tensor_files.insert(t.file());
  for (const FileEntry& f : r->manifest_.files()) {
    const std::string path = dir + "/" + f.name();
    absl::StatusOr<uint64_t> size = internal::FileSize(path);
    if (!size.ok()) {
      return r->Error(absl::StatusCode::kDataLoss,
                      absl::StrCat(f.name(), ": ", size.status().message()));
    }
    if (*size != f.size_bytes()) {
      return r->Error(
          absl::StatusCode::kDataLoss,
          absl::StrCat(f.name(), " is ", *size, " bytes, the manifest says ",
                       f.size_bytes(), " (truncated or overwritten)"));
    }
    if (tensor_files.count(f.name()) == 0) {
      absl::StatusOr<std::string> contents = internal::ReadFile(path);
      if (!contents.ok()) {
        return r->Error(absl::StatusCode::kDataLoss,
                        std::string(contents.status().message()));
      }
      const uint32_t file_crc =
          util::Crc32c(contents->data(), contents->size());
      if (file_crc != f.crc32c()) {
        return r->Error(absl::StatusCode::kDataLoss,
                        absl::StrCat(f.name(), ": CRC32C mismatch (stored ",
                                     Hex32(f.crc32c()), ", computed ",
                                     Hex32(file_crc), ")"));
      }
    }
  }
  return r;
}

absl::StatusOr<const uint8_t*> CheckpointReader::Tensor(
    const TensorEntry& entry) {
  const std::string where =
      absl::StrCat("tensor ", entry.name(), " in ", entry.file(), ": ");
  auto it = files_.find(entry.file());
  if (it == files_.end()) {
    absl::StatusOr<io::SafetensorsFile> file =
        io::SafetensorsFile::Open(dir_ + "/" + entry.file());
    if (!file.ok()) {
      return Error(absl::StatusCode::kDataLoss,
                   std::string(file.status().message()));
    }
    size_t expected = 0;
    for (const TensorEntry& t : manifest_.tensors()) {
      expected += t.file() == entry.file();
    }
    if (file->tensors().size() != expected) {
      return Error(absl::StatusCode::kDataLoss,
                   absl::StrCat(entry.file(), " holds ", file->tensors().size(),
                                " tensors, the manifest lists ", expected));
    }
    size_t data_bytes = 0;
    for (const io::TensorInfo& info : file->tensors()) {
      data_bytes = std::max(data_bytes, info.end);
    }
    uint64_t size = 0;
    for (const FileEntry& f : manifest_.files()) {
      if (f.name() == entry.file()) size = f.size_bytes();
    }
    auto open = std::make_unique<OpenFile>(
        OpenFile{*std::move(file), size - data_bytes});
    it = files_.emplace(entry.file(), std::move(open)).first;
  }
  const OpenFile& open = *it->second;
  const io::TensorInfo* info = open.file.Find(entry.name());
  if (info == nullptr) {
    return Error(absl::StatusCode::kDataLoss,
                 absl::StrCat(where, "missing from the file"));
  }
  const std::vector<int64_t> shape(entry.shape().begin(), entry.shape().end());
  if (io::DTypeName(info->dtype) != entry.dtype() || info->shape != shape ||
      open.data_start + info->begin != entry.offset_bytes() ||
      info->end - info->begin != entry.size_bytes()) {
    return Error(
        absl::StatusCode::kDataLoss,
        absl::StrCat(where, "the file has ",
                     std::string(io::DTypeName(info->dtype)), " ",
                     io::ShapeString(info->shape), " at byte ",
                     open.data_start + info->begin, ", the manifest says ",
                     entry.dtype(), " ", io::ShapeString(shape), " at byte ",
                     entry.offset_bytes()));
  }
  const uint8_t* data = open.file.Data(*info);
  const uint32_t crc = util::Crc32c(data, entry.size_bytes());
  if (crc != entry.crc32c()) {
    return Error(
        absl::StatusCode::kDataLoss,
        absl::StrCat(where, "CRC32C mismatch (stored ", Hex32(entry.crc32c()),
                     ", computed ", Hex32(crc), ")"));
  }
  return data;
}

absl::Status CheckLayout(const CheckpointReader& reader,
                         const model::ParamLayout& layout) {
  const CheckpointManifest& m = reader.manifest();
  auto mismatch = [&](const std::string& detail) {
    return reader.Error(
        absl::StatusCode::kFailedPrecondition,
        absl::StrCat("saved for a different parameter layout: ", detail));
  };
  if (m.flat_param_count() != layout.total() ||
      static_cast<size_t>(m.param_layout_size()) != layout.tensors().size()) {
    return mismatch(absl::StrCat(
        m.param_layout_size(), " tensors in ", m.flat_param_count(),
        " floats in the checkpoint, ", layout.tensors().size(), " tensors in ",
        layout.total(), " floats in this model"));
  }
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const model::ParamTensor& t = layout.tensors()[i];
    const ParamSlot& slot = m.param_layout(static_cast<int>(i));
    const std::vector<int64_t> shape(slot.shape().begin(), slot.shape().end());
    if (slot.name() != t.name || slot.offset() != t.offset ||
        shape != t.shape) {
      return mismatch(absl::StrCat(
          "tensor ", i, " is ", slot.name(), " ", io::ShapeString(shape),
          " at float ", slot.offset(), " in the checkpoint, ", t.name, " ",
          io::ShapeString(t.shape), " at float ", t.offset, " in this model"));
    }
  }
  return absl::OkStatus();
}

// Removes `path`, recording the outcome in `result`.
void RemoveRecorded(const std::string& path, SaveResult* result) {
  absl::Status s = internal::RemoveAll(path);
  if (s.ok()) {
    result->removed.push_back(path);
  } else {
    result->cleanup_errors.push_back(std::string(s.message()));
  }
}

// Removes what earlier saves left in `root`, then prunes to keep_last_n. The
// folder of `step` was just completed by `writer_id`.
void CleanUp(const std::string& root, const std::string& writer_id,
             int64_t step, int keep_last_n, SaveResult* result) {
  absl::StatusOr<std::vector<std::string>> names =
      internal::ListDirectory(root);
  if (!names.ok()) {
    result->cleanup_errors.push_back(std::string(names.status().message()));
    return;
  }
  std::vector<int64_t> complete;
  for (const std::string& name : *names) {
    const std::string path = root + "/" + name;
    std::string owner;
    if (std::optional<int64_t> s = ParseStep(name, kTempPrefix, '_', &owner)) {
      // Another launch's folder is a crash leftover; this launch's own
      // folders of earlier steps are failed saves. Later steps of this
      // launch may still be being written.
      if (owner != writer_id || *s < step) RemoveRecorded(path, result);
    } else if (ParseStep(name, kTrashPrefix, '_', nullptr).has_value()) {
      RemoveRecorded(path, result);
    } else if (std::optional<int64_t> s = ParseStepDir(name)) {
      if (internal::PathExists(path + "/" + kComplete)) {
        complete.push_back(*s);
        continue;
      }
      // Renamed into place but never marked complete: the launch that wrote
      // it failed or crashed before writing COMPLETE.
      CheckpointManifest m;
      absl::StatusOr<std::string> text =
          internal::ReadFile(path + "/" + kManifest);
      const bool ours = text.ok() && ParseText(*text, kManifest, &m).ok() &&
                        m.writer_id() == writer_id;
      if (!ours || *s < step) RemoveRecorded(path, result);
    }
  }
  if (keep_last_n <= 0) return;
  std::sort(complete.rbegin(), complete.rend());
  for (size_t i = static_cast<size_t>(keep_last_n); i < complete.size(); ++i) {
    if (complete[i] == step) continue;
    RemoveRecorded(root + "/" + CheckpointDirName(complete[i]), result);
  }
}

}  // namespace

FlatRange EvenShardRange(size_t total, int rank, int world_size) {
  const size_t n = static_cast<size_t>(world_size);
  const size_t chunk = (total + n - 1) / n;
  const size_t begin = std::min(total, chunk * static_cast<size_t>(rank));
  return {begin, std::min(total, begin + chunk)};
}

absl::StatusOr<std::vector<float>> Reshard(absl::Span<const FlatShard> shards,
                                           FlatRange want) {
  if (want.begin > want.end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "resharding: invalid range [", want.begin, ", ", want.end, ")"));
  }
  std::vector<FlatRange> ranges;
  for (const FlatShard& s : shards) ranges.push_back(s.range);
  if (absl::Status s = CheckCovers(
          ranges, want,
          absl::StrCat("resharding to [", want.begin, ", ", want.end, ")"));
      !s.ok()) {
    return s;
  }
  std::vector<float> out(want.size());
  for (const FlatShard& s : shards) {
    const size_t begin = std::max(s.range.begin, want.begin);
    const size_t end = std::min(s.range.end, want.end);
    if (begin >= end) continue;
    std::copy(s.data + (begin - s.range.begin), s.data + (end - s.range.begin),
              out.begin() + (begin - want.begin));
  }
  return out;
}

std::string NewWriterId() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  const uint64_t nanos = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull +
                         static_cast<uint64_t>(ts.tv_nsec);
  return absl::StrFormat("%d-%016x", getpid(), nanos);
}

std::string CheckpointDirName(int64_t step) {
  return absl::StrCat(kStepPrefix, step);
}

absl::Status WriteRankFiles(const std::string& run_dir,
                            const CheckpointContents& c) {
  if (absl::Status s = ValidateContents(c); !s.ok()) return s;
  const std::string root = CheckpointsRoot(run_dir);
  const bool created_root = !internal::PathExists(root);
  if (absl::Status s = internal::MakeDirectories(root); !s.ok()) return s;
  if (created_root) {
    if (absl::Status s = internal::SyncDirectory(run_dir); !s.ok()) return s;
  }
  const std::string temp =
      root + "/" + TempDirName(c.metadata.step(), WriterIdOf(c));
  if (absl::Status s = internal::MakeDirectories(temp); !s.ok()) return s;

  CheckpointManifest fragment;
  *fragment.mutable_rng() = c.metadata.rng();
  if (c.rank == 0) {
    io::ModelSpec spec = *c.spec;
    spec.torch_dtype = "float32";
    if (absl::Status s = io::WriteHfConfig(spec, temp); !s.ok()) return s;
    if (absl::Status s = AddPlainFile(temp, "config.json", 0, &fragment);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = WriteGenerationConfig(spec, c.tokenizer_dir, temp);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            AddPlainFile(temp, "generation_config.json", 0, &fragment);
        !s.ok()) {
      return s;
    }
    if (!c.tokenizer_dir.empty()) {
      absl::StatusOr<std::vector<std::string>> copied =
          CopyTokenizerFiles(c.tokenizer_dir, temp);
      if (!copied.ok()) return copied.status();
      for (const std::string& name : *copied) {
        if (absl::Status s = AddPlainFile(temp, name, 0, &fragment); !s.ok()) {
          return s;
        }
      }
    }

    std::vector<std::vector<float>> storage;
    const std::vector<io::TensorToWrite> hf =
        HfTensors(*c.layout, c.params, &storage);
    const std::vector<model::HfTensorRef> refs = c.layout->HfTensors();
    std::vector<PendingTensor> model;
    for (size_t i = 0; i < hf.size(); ++i) {
      PendingTensor p{hf[i], {}};
      p.entry.set_role(kRoleModel);
      p.entry.set_hf_transposed(refs[i].transposed);
      p.entry.set_flat_begin(refs[i].offset);
      p.entry.set_flat_end(refs[i].offset + refs[i].numel);
      model.push_back(std::move(p));
    }
    if (absl::Status s =
            WriteTensorFile(temp, kModelFile, 0, std::move(model), &fragment);
        !s.ok()) {
      return s;
    }

    std::vector<PendingTensor> extra;
    for (const TensorGroup& group : c.extra) {
      if (group.role.empty() || group.role == kRoleModel ||
          IsOptimizerRole(group.role)) {
        return absl::InvalidArgumentError(
            absl::StrCat("saving checkpoint step ", c.metadata.step(),
                         ": extra tensor group role '", group.role,
                         "' is empty or reserved"));
      }
      for (const HostTensor& t : group.tensors) {
        PendingTensor p{{t.name, t.shape, t.data}, {}};
        p.entry.set_role(group.role);
        extra.push_back(std::move(p));
      }
    }
    if (!extra.empty()) {
      if (absl::Status s =
              WriteTensorFile(temp, kExtraFile, 0, std::move(extra), &fragment);
          !s.ok()) {
        return s;
      }
    }
  }

  if (c.optimizer.has_value() && c.optimizer->range.size() > 0) {
    const OptimizerShard& o = *c.optimizer;
    const bool whole = o.range.begin == 0 && o.range.end == c.layout->total();
    const std::string file =
        whole ? kOptimizerFile
              : absl::StrCat("optimizer-rank", c.rank, "-of-", c.world_size,
                             ".safetensors");
    const std::vector<int64_t> shape = {static_cast<int64_t>(o.range.size())};
    std::vector<PendingTensor> moments(2);
    moments[0].tensor = {"exp_avg", shape, o.exp_avg};
    moments[0].entry.set_role(kRoleM);
    moments[1].tensor = {"exp_avg_sq", shape, o.exp_avg_sq};
    moments[1].entry.set_role(kRoleV);
    for (PendingTensor& p : moments) {
      p.entry.set_flat_begin(o.range.begin);
      p.entry.set_flat_end(o.range.end);
    }
    if (absl::Status s =
            WriteTensorFile(temp, file, c.rank, std::move(moments), &fragment);
        !s.ok()) {
      return s;
    }
  }
  // Last: its presence tells Finalize that this rank's files are all there.
  return io::WriteFileAtomically(
      temp + "/" + FragmentName(c.rank, c.world_size), ToText(fragment));
}

absl::StatusOr<SaveResult> Finalize(const std::string& run_dir,
                                    const CheckpointContents& c,
                                    const SaveOptions& options) {
  if (absl::Status s = ValidateContents(c); !s.ok()) return s;
  const int64_t step = c.metadata.step();
  const std::string what = absl::StrCat("checkpoint step ", step, ": ");
  if (c.rank != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "Finalize runs on rank 0 only"));
  }
  const std::string writer_id = WriterIdOf(c);
  const std::string root = CheckpointsRoot(run_dir);
  const std::string temp = root + "/" + TempDirName(step, writer_id);
  if (!internal::PathExists(temp)) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, "the temporary folder ", temp,
        " is missing; WriteRankFiles must succeed on every rank first"));
  }

  CheckpointManifest manifest = c.metadata;
  manifest.clear_rng();
  manifest.clear_files();
  manifest.clear_tensors();
  manifest.clear_param_layout();
  manifest.set_format_version(kFormatVersion);
  manifest.set_world_size(c.world_size);
  manifest.set_hf_architecture(HfArchitecture(*c.spec));
  manifest.set_flat_param_count(c.layout->total());
  manifest.set_writer_id(writer_id);
  for (const model::ParamTensor& t : c.layout->tensors()) {
    ParamSlot* slot = manifest.add_param_layout();
    slot->set_name(t.name);
    slot->set_offset(t.offset);
    for (int64_t d : t.shape) slot->add_shape(d);
  }
  std::set<std::string> rng_names;
  std::set<std::string> fragments;
  for (int r = 0; r < c.world_size; ++r) {
    const std::string name = FragmentName(r, c.world_size);
    fragments.insert(name);
    absl::StatusOr<std::string> text = internal::ReadFile(temp + "/" + name);
    if (!text.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, "rank ", r, " has not reported its files (", name,
                       " is missing from ", temp,
                       "); WriteRankFiles must succeed on every rank first"));
    }
    CheckpointManifest fragment;
    if (absl::Status s = ParseText(*text, temp + "/" + name, &fragment);
        !s.ok()) {
      return s;
    }
    for (const RngState& rng : fragment.rng()) {
      if (!rng_names.insert(rng.name()).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, "RNG state '", rng.name(), "' is saved by two ranks"));
      }
      *manifest.add_rng() = rng;
    }
    for (const FileEntry& f : fragment.files()) *manifest.add_files() = f;
    for (const TensorEntry& t : fragment.tensors()) *manifest.add_tensors() = t;
  }
  if (absl::Status s = CheckManifest(manifest, what); !s.ok()) return s;

  // The folder holds exactly what the manifest lists: fragments and files of
  // an earlier failed attempt go.
  std::set<std::string> listed;
  for (const FileEntry& f : manifest.files()) listed.insert(f.name());
  absl::StatusOr<std::vector<std::string>> present =
      internal::ListDirectory(temp);
  if (!present.ok()) return present.status();
  for (const std::string& name : *present) {
    if (listed.count(name) > 0) continue;
    if (absl::Status s = internal::RemoveAll(temp + "/" + name); !s.ok()) {
      return s;
    }
  }
  const std::string manifest_text = ToText(manifest);
  if (absl::Status s =
          io::WriteFileAtomically(temp + "/" + kManifest, manifest_text);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::SyncDirectory(temp); !s.ok()) return s;

  SaveResult result;
  result.dir = root + "/" + CheckpointDirName(step);
  const std::string trash =
      root + "/" + kTrashPrefix + absl::StrCat(step, "_", writer_id);
  const bool replacing = internal::PathExists(result.dir);
  if (replacing) {
    if (absl::Status s = internal::RemoveAll(trash); !s.ok()) return s;
    if (absl::Status s = internal::Rename(result.dir, trash); !s.ok()) return s;
  }
  if (absl::Status s = internal::Rename(temp, result.dir); !s.ok()) return s;
  if (absl::Status s = internal::SyncDirectory(root); !s.ok()) return s;
  if (absl::Status s = io::WriteFileAtomically(
          result.dir + "/" + kComplete,
          absl::StrCat(
              kCompleteKey,
              absl::StrFormat("%08x", util::Crc32c(manifest_text.data(),
                                                   manifest_text.size())),
              "\n"));
      !s.ok()) {
    return s;
  }
  if (replacing) RemoveRecorded(trash, &result);
  CleanUp(root, writer_id, step, options.keep_last_n, &result);
  return result;
}

absl::StatusOr<SaveResult> SaveCheckpoint(const std::string& run_dir,
                                          const CheckpointContents& contents,
                                          const SaveOptions& options) {
  if (contents.world_size != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "saving checkpoint step ", contents.metadata.step(),
        ": SaveCheckpoint is for one rank; with ", contents.world_size,
        " ranks call WriteRankFiles on each, then Finalize on rank 0"));
  }
  absl::Status s = WriteRankFiles(run_dir, contents);
  absl::StatusOr<SaveResult> result = s.ok()
                                          ? Finalize(run_dir, contents, options)
                                          : absl::StatusOr<SaveResult>(s);
  if (!result.ok()) {
    internal::RemoveAll(
        CheckpointsRoot(run_dir) + "/" +
        TempDirName(contents.metadata.step(), WriterIdOf(contents)))
        .IgnoreError();
  }
  return result;
}

absl::StatusOr<CheckpointManifest> VerifyCheckpoint(
    const std::string& checkpoint_dir) {
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader =
      CheckpointReader::Open(checkpoint_dir);
  if (!reader.ok()) return reader.status();
  for (const TensorEntry& t : (*reader)->manifest().tensors()) {
    if (absl::StatusOr<const uint8_t*> data = (*reader)->Tensor(t);
        !data.ok()) {
      return data.status();
    }
  }
  return (*reader)->manifest();
}

absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(
    const std::string& checkpoint_dir, const model::ParamLayout& layout,
    const LoadOptions& options) {
  absl::StatusOr<std::unique_ptr<CheckpointReader>> opened =
      CheckpointReader::Open(checkpoint_dir);
  if (!opened.ok()) return opened.status();
  CheckpointReader& reader = **opened;
  if (absl::Status s = CheckLayout(reader, layout); !s.ok()) return s;
  const CheckpointManifest& m = reader.manifest();

  LoadedCheckpoint out;
  out.dir = checkpoint_dir;
  out.manifest = m;
  out.params.assign(layout.total(), 0.0f);
  std::map<std::string, const TensorEntry*> model;
  for (const TensorEntry& t : m.tensors()) {
    if (t.role() == kRoleModel) model[t.name()] = &t;
  }
  for (const model::HfTensorRef& ref : layout.HfTensors()) {
    auto it = model.find(ref.name);
    if (it == model.end()) {
      return reader.Error(
          absl::StatusCode::kDataLoss,
          absl::StrCat("tensor ", ref.name, " is not in ", kModelFile));
    }
    const TensorEntry& entry = *it->second;
    const std::vector<int64_t> shape(entry.shape().begin(),
                                     entry.shape().end());
    if (shape != ref.shape || entry.hf_transposed() != ref.transposed ||
        entry.flat_begin() != ref.offset) {
      return reader.Error(
          absl::StatusCode::kDataLoss,
          absl::StrCat("tensor ", ref.name, " in ", entry.file(), " has shape ",
                       io::ShapeString(shape), " at float ", entry.flat_begin(),
                       ", this model expects ", io::ShapeString(ref.shape),
                       " at float ", ref.offset));
    }
    absl::StatusOr<const uint8_t*> bytes = reader.Tensor(entry);
    if (!bytes.ok()) return bytes.status();
    model::HfToLayout(ref, reinterpret_cast<const float*>(*bytes),
                      out.params.data() + ref.offset);
  }

  for (const TensorEntry& t : m.tensors()) {
    if (t.role() == kRoleModel || IsOptimizerRole(t.role())) continue;
    absl::StatusOr<const uint8_t*> bytes = reader.Tensor(t);
    if (!bytes.ok()) return bytes.status();
    const float* src = reinterpret_cast<const float*>(*bytes);
    LoadedTensor& e = out.extra.emplace_back();
    e.role = t.role();
    e.name = t.name();
    e.shape.assign(t.shape().begin(), t.shape().end());
    e.values.assign(src, src + t.size_bytes() / 4);
  }

  if (!options.load_optimizer) return out;
  const FlatRange want =
      options.optimizer_range.value_or(FlatRange{0, layout.total()});
  if (want.begin > want.end || want.end > layout.total()) {
    return absl::InvalidArgumentError(
        absl::StrCat("loading ", checkpoint_dir, ": optimizer range [",
                     want.begin, ", ", want.end, ") is not within the ",
                     layout.total(), "-float parameter buffer"));
  }
  std::vector<FlatShard> m_shards, v_shards;
  for (const TensorEntry& t : m.tensors()) {
    if (!IsOptimizerRole(t.role())) continue;
    const FlatRange r{t.flat_begin(), t.flat_end()};
    std::vector<FlatShard>& shards = t.role() == kRoleM ? m_shards : v_shards;
    if (r.end <= want.begin || r.begin >= want.end || r.size() == 0) {
      // Outside the range: recorded for the coverage check only.
      shards.push_back({r, nullptr});
      continue;
    }
    absl::StatusOr<const uint8_t*> bytes = reader.Tensor(t);
    if (!bytes.ok()) return bytes.status();
    shards.push_back({r, reinterpret_cast<const float*>(*bytes)});
  }
  if (m_shards.empty()) {
    return reader.Error(absl::StatusCode::kFailedPrecondition,
                        "it holds no optimizer state; load it with "
                        "load_optimizer = false to read the weights only");
  }
  absl::StatusOr<std::vector<float>> exp_avg = Reshard(m_shards, want);
  if (!exp_avg.ok()) return exp_avg.status();
  absl::StatusOr<std::vector<float>> exp_avg_sq = Reshard(v_shards, want);
  if (!exp_avg_sq.ok()) return exp_avg_sq.status();
  out.optimizer_range = want;
  out.exp_avg = *std::move(exp_avg);
  out.exp_avg_sq = *std::move(exp_avg_sq);
  return out;
}

absl::StatusOr<std::string> FindLatestCheckpoint(
    const std::string& run_dir, std::vector<std::string>* skipped_reasons) {
  const std::string root = CheckpointsRoot(run_dir);
  if (!internal::PathExists(root)) {
    return absl::NotFoundError(absl::StrCat(
        "no checkpoints in ", run_dir, " (no ", kCheckpointsDir, "/ folder)"));
  }
  absl::StatusOr<std::vector<std::string>> names =
      internal::ListDirectory(root);
  if (!names.ok()) return names.status();
  std::vector<int64_t> steps;
  // Temporary folders of saves that never reached Finalize's rename (a crash
  // or kill while writing): (step, folder name).
  std::vector<std::pair<int64_t, std::string>> unfinished;
  for (const std::string& name : *names) {
    if (std::optional<int64_t> s = ParseStepDir(name)) {
      steps.push_back(*s);
    } else if (std::optional<int64_t> t =
                   ParseStep(name, kTempPrefix, '_', nullptr)) {
      unfinished.emplace_back(*t, name);
    }
  }
  std::sort(steps.rbegin(), steps.rend());
  std::sort(unfinished.rbegin(), unfinished.rend());
  size_t skipped = 0;
  size_t next_unfinished = 0;
  // Reports the unfinished saves of steps after `step`, newest first.
  auto skip_unfinished_after = [&](int64_t step) {
    for (; next_unfinished < unfinished.size() &&
           unfinished[next_unfinished].first > step;
         ++next_unfinished) {
      ++skipped;
      if (skipped_reasons == nullptr) continue;
      const auto& [s, name] = unfinished[next_unfinished];
      skipped_reasons->push_back(
          absl::StrCat("checkpoint ", root, "/", CheckpointDirName(s),
                       ": the save did not finish (only its temporary folder ",
                       name, " exists)"));
    }
  };
  for (int64_t s : steps) {
    skip_unfinished_after(s);
    const std::string dir = root + "/" + CheckpointDirName(s);
    absl::StatusOr<CheckpointManifest> verified = VerifyCheckpoint(dir);
    if (verified.ok()) return dir;
    ++skipped;
    if (skipped_reasons != nullptr) {
      skipped_reasons->push_back(std::string(verified.status().message()));
    }
  }
  skip_unfinished_after(-1);
  return absl::NotFoundError(absl::StrCat(
      "no complete checkpoint in ", root,
      skipped > 0 ? absl::StrCat(" (", skipped, " incomplete or corrupt)")
                  : std::string()));
}

}  // namespace prefopt::checkpoint
