#include "trainer/metrics/tensorboard_writer.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/tensorboard/event.pb.h"
#include "trainer/io/append_file.h"
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
  // Exclusive creation: a second writer of the same process in the same
  // second (a run resumed in-process) must not truncate the first one's
  // file, and a symbolic link planted under the name is not followed; the
  // writer takes the next free counter instead.
  std::string path = absl::StrCat(stem, ".prefopt");
  absl::StatusOr<io::AppendFile> file =
      io::AppendFile::Open(path, io::AppendFile::Mode::kCreateNew);
  for (int n = 1; absl::IsAlreadyExists(file.status()) && n < 100; ++n) {
    path = absl::StrCat(stem, ".", n, ".prefopt");
    file = io::AppendFile::Open(path, io::AppendFile::Mode::kCreateNew);
  }
  if (!file.ok()) {
    return absl::Status(
        file.status().code(),
        absl::StrCat("cannot create the TensorBoard event file: ",
                     file.status().message()));
  }
  TensorBoardWriter writer(*std::move(file));
  tensorboard::Event event;
  event.set_wall_time(now);
  event.set_file_version("brain.Event:2");
  absl::Status s = writer.WriteRecord(event.SerializeAsString());
  if (!s.ok()) return s;
  return writer;
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
  return file_.Append(TfRecord(data));
}

}  // namespace prefopt::metrics
