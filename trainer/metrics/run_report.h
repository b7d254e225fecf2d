// report.html: the page a person opens after a run. One line chart per metric
// of metrics.jsonl over the steps, the final value of every metric, the
// resolved config and the final evaluation, in one self-contained file
// (inline CSS and SVG; no scripts, no network) that any browser shows
// offline and that can be mailed or attached as it is.
#ifndef PREFOPT_TRAINER_METRICS_RUN_REPORT_H_
#define PREFOPT_TRAINER_METRICS_RUN_REPORT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace prefopt::metrics {

// Reads run_dir/metrics.jsonl and writes run_dir/report.html atomically:
// a chart for each metric whose finite values are not all equal ("loss"
// first, then by name; null values are left out of the line), a table of
// every metric's last, minimum and maximum value, `config_text` verbatim and
// `eval_table` (metric name, value) as a table; an empty `eval_table` is
// reported as "no evaluation". Fails, naming the file and line, when
// metrics.jsonl cannot be read or a line is not a JSON object with a numeric
// "step".
absl::Status WriteRunReport(
    const std::string& run_dir, const std::string& config_text,
    const std::vector<std::pair<std::string, std::string>>& eval_table);

// Round axis tick values ("nice" steps of 1, 2 or 5 times a power of ten,
// about `target` of them) from the first at or below `lo` to the first at or
// above `hi`. Requires lo < hi, both finite.
std::vector<double> AxisTicks(double lo, double hi, int target);

}  // namespace prefopt::metrics

#endif  // PREFOPT_TRAINER_METRICS_RUN_REPORT_H_
