#include "trainer/metrics/tensorboard_writer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/tensorboard/event.pb.h"
#include "trainer/util/crc32c.h"

namespace prefopt::metrics {
namespace {

double WallTime() {
  return std::chrono::duration<double>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
    return "localhost";
  }
  return name;
}

void AppendLittleEndian(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i)
    out->push_back(static_cast<char>(v >> (8 * i)));
}

}  // namespace

std::string TensorBoardTag(absl::string_view metric_name) {
  if (absl::StartsWith(metric_name, "eval/") ||
      absl::StartsWith(metric_name, "test/") ||
      absl::StartsWith(metric_name, "train/")) {
    return std::string(metric_name);
  }
  return absl::StrCat("train/", metric_name);
}

std::string TfRecord(absl::string_view data) {
  std::string record;
  record.reserve(data.size() + 16);
  AppendLittleEndian(data.size(), 8, &record);
  AppendLittleEndian(util::MaskedCrc32c(record.data(), 8), 4, &record);
  record.append(data.data(), data.size());
  AppendLittleEndian(util::MaskedCrc32c(data.data(), data.size()), 4, &record);
  return record;
}

absl::StatusOr<TensorBoardWriter> TensorBoardWriter::Open(
    const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(
        log_dir,
        ": cannot create the TensorBoard log directory: ", ec.message()));
  }
  const double now = WallTime();
  const std::string stem =
      absl::StrCat(log_dir, "/events.out.tfevents.", static_cast<int64_t>(now),
                   ".", HostName(), ".", static_cast<int64_t>(getpid()));
  // "x": a second writer of the same process in the same second (a run
  // resumed in-process) must not truncate the first one's file; it takes the
  // next free counter instead.
  std::string path = absl::StrCat(stem, ".prefopt");
  FILE* f = std::fopen(path.c_str(), "wbx");
  for (int n = 1; f == nullptr && errno == EEXIST && n < 100; ++n) {
    path = absl::StrCat(stem, ".", n, ".prefopt");
    f = std::fopen(path.c_str(), "wbx");
  }
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat(
        path,
        ": cannot create the TensorBoard event file: ", std::strerror(errno)));
  }
  TensorBoardWriter writer(path, f);
  tensorboard::Event event;
  event.set_wall_time(now);
  event.set_file_version("brain.Event:2");
  absl::Status s = writer.WriteRecord(event.SerializeAsString());
  if (!s.ok()) return s;
  return writer;
}

TensorBoardWriter::TensorBoardWriter(TensorBoardWriter&& other) noexcept
    : path_(std::move(other.path_)), f_(other.f_) {
  other.f_ = nullptr;
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_ != nullptr) std::fclose(f_);
}

absl::Status TensorBoardWriter::Write(
    int64_t step, const std::map<std::string, double>& scalars) {
  tensorboard::Event event;
  event.set_wall_time(WallTime());
  event.set_step(step);
  tensorboard::Summary* summary = event.mutable_summary();
  for (const auto& [name, value] : scalars) {
    tensorboard::Summary::Value* v = summary->add_value();
    v->set_tag(TensorBoardTag(name));
    v->set_simple_value(static_cast<float>(value));
  }
  return WriteRecord(event.SerializeAsString());
}

absl::Status TensorBoardWriter::WriteSessionStart(int64_t step) {
  tensorboard::Event event;
  event.set_wall_time(WallTime());
  event.set_step(step);
  event.mutable_session_log()->set_status(tensorboard::SessionLog::START);
  return WriteRecord(event.SerializeAsString());
}

absl::Status TensorBoardWriter::WriteRecord(const std::string& data) {
  const std::string record = TfRecord(data);
  if (std::fwrite(record.data(), 1, record.size(), f_) != record.size() ||
      std::fflush(f_) != 0) {
    return absl::InternalError(
        absl::StrCat(path_, ": write failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace prefopt::metrics
