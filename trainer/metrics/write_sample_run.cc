// Writes a run folder as a training run would, with made-up DPO-like metrics:
// metrics.jsonl, a TensorBoard event file and report.html, for the checks in
// tests/ux/ that read them with TensorBoard's own reader and a browser.
//   write_sample_run RUN_DIR
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "trainer/metrics/metrics_log.h"
#include "trainer/metrics/run_report.h"
#include "trainer/metrics/tensorboard_writer.h"

namespace prefopt::metrics {
namespace {

constexpr int kSteps = 200;
constexpr int kLogEvery = 5;
constexpr int kEvalEvery = 50;

std::map<std::string, double> TrainMetrics(int step) {
  const double t = static_cast<double>(step) / kSteps;
  // A little deterministic wobble, as real curves have.
  const double wobble = 0.03 * std::sin(step * 0.7);
  const double margin = 2.5 * t + wobble;
  return {
      {"loss", std::log1p(std::exp(-margin)) + 0.02 * std::cos(step * 1.3)},
      {"rewards/chosen", 0.8 * t + wobble},
      {"rewards/rejected", -1.7 * t - wobble},
      {"rewards/margins", margin},
      {"rewards/accuracies", std::min(1.0, 0.5 + 0.45 * t + wobble)},
      {"logps/chosen", -40 + 5 * t},
      {"logps/rejected", -42 - 12 * t},
      {"lr", 1e-3 * 0.5 * (1 + std::cos(M_PI * t))},
      // One non-finite value: null in metrics.jsonl, NaN in TensorBoard.
      {"grad_norm", step == 100 ? std::nan("") : 2.0 / (1 + 5 * t) + wobble},
      {"epoch", 4.0 * t},
      {"beta", 0.1},  // constant: listed, not charted
      {"tokens_per_second", 5000 + 300 * std::sin(step * 0.1)},
  };
}

absl::Status WriteSampleRun(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  auto log = MetricsLog::Open(run_dir + "/metrics.jsonl");
  if (!log.ok()) return log.status();
  auto events = TensorBoardWriter::Open(run_dir);
  if (!events.ok()) return events.status();
  double eval_loss = 0;
  for (int step = kLogEvery; step <= kSteps; step += kLogEvery) {
    const std::map<std::string, double> m = TrainMetrics(step);
    absl::Status s = log->Write(step, m);
    if (s.ok()) s = events->Write(step, m);
    if (!s.ok()) return s;
    if (step % kEvalEvery == 0) {
      eval_loss = 0.7 - 0.35 * step / kSteps;
      const std::map<std::string, double> eval = {
          {"eval/loss", eval_loss},
          {"eval/rewards/accuracies", 0.5 + 0.4 * step / kSteps}};
      s = log->Write(step, eval);
      if (s.ok()) s = events->Write(step, eval);
      if (!s.ok()) return s;
    }
  }
  return WriteRunReport(run_dir,
                        "# a made-up run for tests/ux\nobjective {\n"
                        "  dpo { beta: 0.1 }\n}\nmax_steps: 200\n",
                        {{"eval/loss", std::to_string(eval_loss)},
                         {"eval/rewards/accuracies", "0.9"}});
}

}  // namespace
}  // namespace prefopt::metrics

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: write_sample_run RUN_DIR\n";
    return 2;
  }
  absl::Status s = prefopt::metrics::WriteSampleRun(argv[1]);
  if (!s.ok()) {
    std::cerr << "write_sample_run: " << s.message() << "\n";
    return 1;
  }
  return 0;
}
