#include "trainer/metrics/metrics_log.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/io/append_file.h"

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
  absl::StatusOr<io::AppendFile> file =
      io::AppendFile::Open(path, io::AppendFile::Mode::kOpenOrCreate);
  if (!file.ok()) return file.status();
  int64_t lines = 0;
  // The end of the last complete line to keep.
  uint64_t keep_bytes = 0;
  if (keep_lines > 0) {
    absl::StatusOr<std::string> text = file->ReadAll();
    if (!text.ok()) return text.status();
    for (size_t i = 0; lines < keep_lines && i < text->size(); ++i) {
      if ((*text)[i] == '\n') {
        ++lines;
        keep_bytes = i + 1;
      }
    }
  }
  if (absl::Status s = file->Truncate(keep_bytes); !s.ok()) return s;
  return MetricsLog(*std::move(file), lines);
}

absl::Status MetricsLog::Write(int64_t step,
                               const std::map<std::string, double>& values) {
  if (absl::Status s = file_.Append(MetricsJsonLine(step, values) + "\n");
      !s.ok()) {
    return s;
  }
  ++lines_;
  return absl::OkStatus();
}

}  // namespace prefopt::metrics
