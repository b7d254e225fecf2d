// What a person watching a run sees: on a terminal, one live line redrawn in
// place (step, loss, a key metric, tokens/s, elapsed, ETA); elsewhere (Slurm
// logs, pipes), plain lines that read well in a file. Long preparation steps
// (tokenizing, reference log-probs) report their progress the same way.
#ifndef PREFOPT_TRAINER_METRICS_PROGRESS_H_
#define PREFOPT_TRAINER_METRICS_PROGRESS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>

#include "absl/strings/string_view.h"

namespace prefopt::metrics {

// A duration for people: "0s", "59s", "1m05s", "2h03m", "3d04h" (truncated
// to the unit shown); "?" when negative or not finite.
std::string FormatDuration(double seconds);

// The time left when `done` of the work took `elapsed_seconds` and `left`
// more is to do, at the same pace: FormatDuration of it, "0s" when nothing is
// left, "?" when there is no pace yet (nothing done, or no time elapsed).
std::string FormatEta(double elapsed_seconds, int64_t done, int64_t left);

// Whether file descriptor `fd` is a terminal.
bool IsTerminal(int fd);

// The width of terminal `fd` in columns, or 80 when it cannot be asked.
int TerminalColumns(int fd);

class ProgressReporter {
 public:
  // Seconds on a monotonic clock.
  using Clock = std::function<double()>;

  // Reports to `out`: a live line when `terminal`, else plain lines.
  // `total_steps` is the run's length; `first_step` the steps done before
  // this process started (a resumed run), which the ETA leaves out of its
  // pace. `clock` defaults to std::chrono::steady_clock.
  ProgressReporter(std::ostream& out, bool terminal, int64_t total_steps,
                   int64_t first_step = 0, Clock clock = nullptr);
  // Ends an open live line, so that what is printed next starts on its own.
  ~ProgressReporter();
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  // The live line is cut to columns - 1 characters: a line that wraps cannot
  // be redrawn in place.
  void set_columns(int columns) { columns_ = columns; }

  // Reports optimizer step `step` (1-based) with its metrics ("loss",
  // "tokens_per_second", "lr", "grad_norm" and the objective's). On a
  // terminal the live line is redrawn at most every `kMinRedrawSeconds`, and
  // always at the last step, whose line then stays; otherwise a line is
  // printed when `logged`. Elapsed time and ETA count from construction or
  // the end of the last phase, whichever is later.
  void Step(int64_t step, const std::map<std::string, double>& metrics,
            bool logged);

  // Reports a preparation phase, e.g. Phase("tokenizing", 1200, 5000). On a
  // terminal the live line is redrawn as for steps; otherwise a line is
  // printed at the first call, at each further tenth of `total`, and at the
  // end. A phase ends when done == total (its line is then finished with a
  // newline), and a new one starts when the name changes or done goes back.
  void Phase(absl::string_view name, int64_t done, int64_t total);

  // Prints `line` on a line of its own; on a terminal the live line is
  // cleared first and redrawn after it.
  void Print(absl::string_view line);

  // Ends an open live line with a newline.
  void Finish();

  static constexpr double kMinRedrawSeconds = 0.2;

 private:
  // Redraws the live line as `line` if `force` or enough time has passed.
  void Draw(const std::string& line, bool force);

  std::ostream& out_;
  const bool terminal_;
  const int64_t total_steps_;
  const int64_t first_step_;
  const Clock clock_;
  // When training's pace is measured from: construction, or the end of the
  // last phase, so that preparation does not count as training time.
  double steps_start_;
  int columns_ = 80;
  // The live line on screen ("" when none) and when it was drawn.
  std::string live_;
  double last_draw_ = 0;
  bool drawn_ = false;
  // The current phase: its name, start time, last `done`, and the last tenth
  // printed in plain mode.
  std::string phase_;
  double phase_start_ = 0;
  int64_t phase_done_ = -1;
  int64_t phase_tenth_ = -1;
};

// The plain (non-terminal) line of a step: every headline metric, lr,
// grad_norm, tokens/s, elapsed and ETA, e.g.
// "step 20/100  loss 0.6931  rewards/accuracies 0.5000  lr 0.001  grad_norm
// 1.234  512 tok/s  elapsed 1m05s  eta 4m20s".
std::string PlainStepLine(int64_t step, int64_t total,
                          const std::map<std::string, double>& metrics,
                          const std::string& elapsed, const std::string& eta);

// The live line of a step: step/total, elapsed, ETA, loss, the first headline
// metric and tokens/s, e.g. "step 20/100  elapsed 1m05s  eta 4m20s  loss
// 0.6931  rewards/accuracies 0.500  512 tok/s".
std::string LiveStepLine(int64_t step, int64_t total,
                         const std::map<std::string, double>& metrics,
                         const std::string& elapsed, const std::string& eta);

}  // namespace prefopt::metrics

#endif  // PREFOPT_TRAINER_METRICS_PROGRESS_H_
