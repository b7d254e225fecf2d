#include "trainer/metrics/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace prefopt::metrics {
namespace {

// The metrics a person judges a run by, per objective; the live line has room
// for the first one present.
constexpr const char* kHeadlineMetrics[] = {
    "rewards/accuracies", "rewards/margins", "mean_token_accuracy"};

// Back to the start of the line, then clear it (ANSI "erase in line").
constexpr char kRedraw[] = "\r\033[K";

double SteadySeconds() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Appends "  <name> <value>" with `decimals` digits after the point, if the
// metric is there.
void AppendFixed(const std::map<std::string, double>& metrics, const char* name,
                 int decimals, std::string* line) {
  auto it = metrics.find(name);
  if (it == metrics.end()) return;
  absl::StrAppendFormat(line, "  %s %.*f", name, decimals, it->second);
}

void AppendTokensPerSecond(const std::map<std::string, double>& metrics,
                           std::string* line) {
  auto it = metrics.find("tokens_per_second");
  if (it == metrics.end()) return;
  absl::StrAppendFormat(line, "  %.0f tok/s", it->second);
}

std::string PhaseLine(absl::string_view name, int64_t done, int64_t total,
                      double elapsed) {
  const int64_t percent = total > 0 ? done * 100 / total : 100;
  std::string line =
      absl::StrFormat("%s %d/%d (%d%%)", name, done, total, percent);
  if (done >= total) {
    absl::StrAppend(&line, "  done in ", FormatDuration(elapsed));
  } else {
    absl::StrAppend(&line, "  elapsed ", FormatDuration(elapsed), "  eta ",
                    FormatEta(elapsed, done, total - done));
  }
  return line;
}

}  // namespace

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds);
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

std::string FormatEta(double elapsed_seconds, int64_t done, int64_t left) {
  if (left <= 0) return "0s";
  // No pace yet: nothing done, or done in no measurable time.
  if (done <= 0 || !(elapsed_seconds > 0)) return "?";
  return FormatDuration(elapsed_seconds / static_cast<double>(done) *
                        static_cast<double>(left));
}

bool IsTerminal(int fd) { return isatty(fd) == 1; }

int TerminalColumns(int fd) {
  winsize size{};
  if (ioctl(fd, TIOCGWINSZ, &size) != 0 || size.ws_col == 0) return 80;
  return size.ws_col;
}

std::string PlainStepLine(int64_t step, int64_t total,
                          const std::map<std::string, double>& metrics,
                          const std::string& elapsed, const std::string& eta) {
  std::string line = absl::StrFormat("step %d/%d", step, total);
  AppendFixed(metrics, "loss", 4, &line);
  for (const char* name : kHeadlineMetrics) {
    AppendFixed(metrics, name, 4, &line);
  }
  auto lr = metrics.find("lr");
  if (lr != metrics.end())
    absl::StrAppendFormat(&line, "  lr %.3g", lr->second);
  AppendFixed(metrics, "grad_norm", 3, &line);
  AppendTokensPerSecond(metrics, &line);
  absl::StrAppend(&line, "  elapsed ", elapsed, "  eta ", eta);
  return line;
}

std::string LiveStepLine(int64_t step, int64_t total,
                         const std::map<std::string, double>& metrics,
                         const std::string& elapsed, const std::string& eta) {
  // Times first: a line too wide for the terminal loses its end.
  std::string line = absl::StrFormat("step %d/%d  elapsed %s  eta %s", step,
                                     total, elapsed, eta);
  AppendFixed(metrics, "loss", 4, &line);
  for (const char* name : kHeadlineMetrics) {
    if (metrics.count(name) != 0) {
      AppendFixed(metrics, name, 3, &line);
      break;
    }
  }
  AppendTokensPerSecond(metrics, &line);
  return line;
}

ProgressReporter::ProgressReporter(std::ostream& out, bool terminal,
                                   int64_t total_steps, int64_t first_step,
                                   Clock clock)
    : out_(out),
      terminal_(terminal),
      total_steps_(total_steps),
      first_step_(first_step),
      clock_(clock ? std::move(clock) : Clock(SteadySeconds)),
      steps_start_(clock_()) {}

ProgressReporter::~ProgressReporter() { Finish(); }

void ProgressReporter::Step(int64_t step,
                            const std::map<std::string, double>& metrics,
                            bool logged) {
  const double elapsed = clock_() - steps_start_;
  const std::string elapsed_text = FormatDuration(elapsed);
  const std::string eta =
      FormatEta(elapsed, step - first_step_, total_steps_ - step);
  if (!terminal_) {
    if (logged) {
      out_ << PlainStepLine(step, total_steps_, metrics, elapsed_text, eta)
           << "\n";
      out_.flush();
    }
    return;
  }
  const bool last = step >= total_steps_;
  Draw(LiveStepLine(step, total_steps_, metrics, elapsed_text, eta), last);
  if (last) Finish();
}

void ProgressReporter::Phase(absl::string_view name, int64_t done,
                             int64_t total) {
  const double now = clock_();
  if (name != phase_ || done < phase_done_) {
    Finish();
    phase_ = std::string(name);
    phase_start_ = now;
    phase_tenth_ = -1;
  }
  phase_done_ = done;
  const bool end = done >= total;
  const std::string line = PhaseLine(name, done, total, now - phase_start_);
  if (terminal_) {
    Draw(line, end);
  } else {
    const int64_t tenth = total > 0 ? done * 10 / total : 10;
    if (tenth > phase_tenth_ || end) {
      out_ << line << "\n";
      out_.flush();
      phase_tenth_ = tenth;
    }
  }
  if (end) {
    Finish();
    phase_.clear();
    phase_done_ = -1;
    // Training's pace (elapsed, ETA) starts after the preparation.
    steps_start_ = now;
  }
}

void ProgressReporter::Print(absl::string_view line) {
  if (terminal_ && !live_.empty()) {
    out_ << kRedraw << line << "\n" << live_;
  } else {
    out_ << line << "\n";
  }
  out_.flush();
}

void ProgressReporter::Finish() {
  if (terminal_ && !live_.empty()) {
    out_ << "\n";
    out_.flush();
  }
  live_.clear();
  drawn_ = false;
}

void ProgressReporter::Draw(const std::string& line, bool force) {
  const double now = clock_();
  if (!force && drawn_ && now - last_draw_ < kMinRedrawSeconds) return;
  live_ = columns_ > 1 && line.size() > static_cast<size_t>(columns_ - 1)
              ? line.substr(0, columns_ - 1)
              : line;
  out_ << kRedraw << live_;
  out_.flush();
  last_draw_ = now;
  drawn_ = true;
}

}  // namespace prefopt::metrics
