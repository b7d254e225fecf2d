// metrics.jsonl: one JSON object per logged optimizer step, flushed as it is
// written so that a crashed or preempted run keeps every line it logged.
#ifndef PREFOPT_TRAINER_METRICS_METRICS_LOG_H_
#define PREFOPT_TRAINER_METRICS_METRICS_LOG_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "trainer/io/append_file.h"

namespace prefopt::metrics {

class MetricsLog {
 public:
  // Opens `path` for writing after its first `keep_lines` complete lines and
  // drops the rest (keep_lines 0: an empty file). A resumed run keeps the
  // lines of the steps its checkpoint covers and drops those of later steps,
  // which it runs again. A missing file, or one with fewer complete lines, is
  // kept as it is (a partial last line, left by a crash, is dropped);
  // lines() then says how many there are. A symbolic link at `path` is
  // refused (io::AppendFile).
  static absl::StatusOr<MetricsLog> Open(const std::string& path,
                                         int64_t keep_lines = 0);
  MetricsLog(MetricsLog&& other) noexcept = default;
  MetricsLog& operator=(MetricsLog&&) = delete;
  MetricsLog(const MetricsLog&) = delete;

  // Writes {"step": step, <values in name order>} as one line; a line that
  // cannot be written whole (a full disk) is not written at all.
  absl::Status Write(int64_t step, const std::map<std::string, double>& values);

  // Lines in the file: those kept by Open and those written since.
  int64_t lines() const { return lines_; }

 private:
  MetricsLog(io::AppendFile file, int64_t lines)
      : file_(std::move(file)), lines_(lines) {}
  io::AppendFile file_;
  int64_t lines_;
};

// One JSON line (without the newline) for the values; non-finite values are
// written as null, since JSON has no NaN or infinity.
std::string MetricsJsonLine(int64_t step,
                            const std::map<std::string, double>& values);

}  // namespace prefopt::metrics

#endif  // PREFOPT_TRAINER_METRICS_METRICS_LOG_H_
