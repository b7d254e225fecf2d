// metrics.jsonl: one JSON object per logged optimizer step, flushed as it is
// written so that a crashed or preempted run keeps every line it logged.
#ifndef PREFOPT_TRAINER_METRICS_METRICS_LOG_H_
#define PREFOPT_TRAINER_METRICS_METRICS_LOG_H_

#include <cstdio>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace prefopt::metrics {

class MetricsLog {
 public:
  // Opens (truncating) path for writing.
  static absl::StatusOr<MetricsLog> Open(const std::string& path);
  MetricsLog(MetricsLog&& other) noexcept;
  MetricsLog& operator=(MetricsLog&&) = delete;
  MetricsLog(const MetricsLog&) = delete;
  ~MetricsLog();

  // Writes {"step": step, <values in name order>} as one line.
  absl::Status Write(int64_t step, const std::map<std::string, double>& values);

 private:
  MetricsLog(std::string path, FILE* f) : path_(std::move(path)), f_(f) {}
  std::string path_;
  FILE* f_;
};

// One JSON line (without the newline) for the values; non-finite values are
// written as null, since JSON has no NaN or infinity.
std::string MetricsJsonLine(int64_t step,
                            const std::map<std::string, double>& values);

}  // namespace prefopt::metrics

#endif  // PREFOPT_TRAINER_METRICS_METRICS_LOG_H_
