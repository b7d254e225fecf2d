#include "trainer/metrics/metrics_log.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace prefopt::metrics {

std::string MetricsJsonLine(int64_t step,
                            const std::map<std::string, double>& values) {
  std::string line = absl::StrCat("{\"step\": ", step);
  for (const auto& [name, value] : values) {
    // Metric names are ours (letters, digits, '/', '_'): no escaping needed.
    absl::StrAppend(&line, ", \"", name, "\": ");
    if (std::isfinite(value)) {
      absl::StrAppendFormat(&line, "%.9g", value);
    } else {
      absl::StrAppend(&line, "null");
    }
  }
  line += "}";
  return line;
}

absl::StatusOr<MetricsLog> MetricsLog::Open(const std::string& path,
                                            int64_t keep_lines) {
  int64_t lines = 0;
  if (keep_lines > 0) {
    // The end of the last complete line to keep.
    off_t keep_bytes = 0;
    if (FILE* in = std::fopen(path.c_str(), "r"); in != nullptr) {
      off_t offset = 0;
      for (int c; lines < keep_lines && (c = std::fgetc(in)) != EOF;) {
        ++offset;
        if (c == '\n') {
          ++lines;
          keep_bytes = offset;
        }
      }
      const bool failed = std::ferror(in) != 0;
      std::fclose(in);
      if (failed) {
        return absl::InternalError(
            absl::StrCat(path, ": read failed: ", std::strerror(errno)));
      }
      if (truncate(path.c_str(), keep_bytes) != 0) {
        return absl::InternalError(
            absl::StrCat(path, ": cannot truncate to ", lines,
                         " lines: ", std::strerror(errno)));
      }
    } else if (errno != ENOENT) {
      return absl::InternalError(absl::StrCat(
          path, ": cannot open for reading: ", std::strerror(errno)));
    }
  }
  FILE* f = std::fopen(path.c_str(), keep_lines > 0 ? "a" : "w");
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat(
        path, ": cannot open for writing: ", std::strerror(errno)));
  }
  return MetricsLog(path, f, lines);
}

MetricsLog::MetricsLog(MetricsLog&& other) noexcept
    : path_(std::move(other.path_)), f_(other.f_), lines_(other.lines_) {
  other.f_ = nullptr;
}

MetricsLog::~MetricsLog() {
  if (f_ != nullptr) std::fclose(f_);
}

absl::Status MetricsLog::Write(int64_t step,
                               const std::map<std::string, double>& values) {
  const std::string line = MetricsJsonLine(step, values) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() ||
      std::fflush(f_) != 0) {
    return absl::InternalError(
        absl::StrCat(path_, ": write failed: ", std::strerror(errno)));
  }
  ++lines_;
  return absl::OkStatus();
}

}  // namespace prefopt::metrics
