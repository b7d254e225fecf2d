#include "trainer/metrics/progress.h"

#include <map>
#include <sstream>
#include <string>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace prefopt::metrics {
namespace {

TEST(FormatDurationTest, PicksTwoUnits) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(0.99), "0s");
  EXPECT_EQ(FormatDuration(59.9), "59s");
  EXPECT_EQ(FormatDuration(60), "1m00s");
  EXPECT_EQ(FormatDuration(65), "1m05s");
  EXPECT_EQ(FormatDuration(3599), "59m59s");
  EXPECT_EQ(FormatDuration(3600), "1h00m");
  EXPECT_EQ(FormatDuration(7380 + 59), "2h03m");
  EXPECT_EQ(FormatDuration(86399), "23h59m");
  EXPECT_EQ(FormatDuration(86400 * 3 + 3600 * 4 + 1), "3d04h");
  EXPECT_EQ(FormatDuration(-1), "?");
  EXPECT_EQ(FormatDuration(1.0 / 0.0), "?");
  EXPECT_EQ(FormatDuration(0.0 / 0.0), "?");
}

TEST(FormatEtaTest, ExtrapolatesThePace) {
  EXPECT_EQ(FormatEta(10, 10, 90), "1m30s");
  EXPECT_EQ(FormatEta(1, 3, 1), "0s");  // a third of a second
  EXPECT_EQ(FormatEta(3600, 1, 24), "1d00h");
  EXPECT_EQ(FormatEta(5, 10, 0), "0s");
  EXPECT_EQ(FormatEta(5, 10, -3), "0s");
  EXPECT_EQ(FormatEta(0, 0, 10), "?");
  EXPECT_EQ(FormatEta(0, 5, 10), "?");
}

// A clock the test moves by hand.
struct FakeClock {
  double now = 1000;
  ProgressReporter::Clock Fn() {
    return [this] { return now; };
  }
};

std::map<std::string, double> DpoMetrics(double loss) {
  return {{"loss", loss},
          {"rewards/accuracies", 0.625},
          {"rewards/margins", 0.03125},
          {"rewards/chosen", 0.5},
          {"lr", 0.001},
          {"grad_norm", 1.5},
          {"epoch", 0.1},
          {"tokens_per_second", 1234.4}};
}

TEST(ProgressReporterTest, PlainModePrintsLoggedStepsOnly) {
  std::ostringstream out;
  FakeClock clock;
  {
    ProgressReporter progress(out, /*terminal=*/false, /*total_steps=*/100,
                              /*first_step=*/0, clock.Fn());
    clock.now += 10;
    progress.Step(9, DpoMetrics(0.7), /*logged=*/false);
    clock.now += 1;
    progress.Step(10, DpoMetrics(0.6931), /*logged=*/true);
    progress.Print("checkpoint saved");
    clock.now += 89;
    progress.Step(100, {{"loss", 0.25}}, /*logged=*/true);
  }
  EXPECT_EQ(out.str(),
            "step 10/100  loss 0.6931  rewards/accuracies 0.6250  "
            "rewards/margins 0.0312  lr 0.001  grad_norm 1.500  1234 tok/s  "
            "elapsed 11s  eta 1m39s\n"
            "checkpoint saved\n"
            "step 100/100  loss 0.2500  elapsed 1m40s  eta 0s\n");
}

TEST(ProgressReporterTest, PlainModeEtaLeavesOutStepsBeforeAResume) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress(out, false, 100, /*first_step=*/50, clock.Fn());
  clock.now += 10;
  progress.Step(60, {{"loss", 1}}, true);
  EXPECT_EQ(out.str(), "step 60/100  loss 1.0000  elapsed 10s  eta 40s\n");
}

TEST(ProgressReporterTest, PlainModePhasePrintsEachTenthAndTheEnd) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress(out, false, 10, 0, clock.Fn());
  for (int done = 0; done <= 40; done += 2) {
    progress.Phase("tokenizing", done, 40);
    clock.now += 0.5;
  }
  // Training's clock starts when the phase ends.
  clock.now = 2000;
  progress.Phase("reference log-probs", 3, 3);
  clock.now += 4;
  progress.Step(1, {{"loss", 2}}, true);
  EXPECT_EQ(out.str(),
            "tokenizing 0/40 (0%)  elapsed 0s  eta ?\n"
            "tokenizing 4/40 (10%)  elapsed 1s  eta 9s\n"
            "tokenizing 8/40 (20%)  elapsed 2s  eta 8s\n"
            "tokenizing 12/40 (30%)  elapsed 3s  eta 7s\n"
            "tokenizing 16/40 (40%)  elapsed 4s  eta 6s\n"
            "tokenizing 20/40 (50%)  elapsed 5s  eta 5s\n"
            "tokenizing 24/40 (60%)  elapsed 6s  eta 4s\n"
            "tokenizing 28/40 (70%)  elapsed 7s  eta 3s\n"
            "tokenizing 32/40 (80%)  elapsed 8s  eta 2s\n"
            "tokenizing 36/40 (90%)  elapsed 9s  eta 1s\n"
            "tokenizing 40/40 (100%)  done in 10s\n"
            "reference log-probs 3/3 (100%)  done in 0s\n"
            "step 1/10  loss 2.0000  elapsed 4s  eta 36s\n");
}

// The live-line frames written so far: the text after each "\r\033[K".
std::vector<std::string> Frames(const std::string& s) {
  std::vector<std::string> frames = absl::StrSplit(s, "\r\033[K");
  frames.erase(frames.begin());
  return frames;
}

TEST(ProgressReporterTest, TerminalModeRedrawsInPlaceAtMostFiveTimesASecond) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress(out, /*terminal=*/true, 1000, 0, clock.Fn());
  progress.set_columns(200);
  // 64 steps over 1 s (1/64 s apart, exact in binary), every one logged:
  // redrawn every 13th step, the first 0.2 s or more after the last redraw.
  clock.now += 1;
  for (int step = 1; step <= 64; ++step) {
    progress.Step(step, DpoMetrics(1.0 / step), /*logged=*/true);
    clock.now += 1.0 / 64;
  }
  const std::vector<std::string> frames = Frames(out.str());
  ASSERT_EQ(frames.size(), 5u) << out.str();
  EXPECT_EQ(frames[0],
            "step 1/1000  elapsed 1s  eta 16m39s  loss 1.0000  "
            "rewards/accuracies 0.625  1234 tok/s");
  const std::string step14 = "step 14/1000  elapsed 1s  eta 1m24s  loss 0.0714";
  EXPECT_EQ(frames[1].substr(0, step14.size()), step14);
  EXPECT_EQ(frames[4].substr(0, 12), "step 53/1000");
  EXPECT_EQ(out.str().find('\n'), std::string::npos);
}

TEST(ProgressReporterTest, TerminalModeAlwaysDrawsAndKeepsTheLastStep) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress(out, true, 3, 0, clock.Fn());
  progress.Step(1, {{"loss", 3}}, false);
  progress.Step(2, {{"loss", 2}}, false);  // too soon: not drawn
  progress.Step(3, {{"loss", 1}}, false);  // the last: drawn anyway
  EXPECT_EQ(out.str(),
            "\r\033[Kstep 1/3  elapsed 0s  eta ?  loss 3.0000"
            "\r\033[Kstep 3/3  elapsed 0s  eta 0s  loss 1.0000\n");
}

TEST(ProgressReporterTest, TerminalModeCutsTheLineToTheWidth) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress(out, true, 1000, 0, clock.Fn());
  progress.set_columns(21);
  progress.Step(1, DpoMetrics(0.5), false);
  EXPECT_EQ(out.str(), "\r\033[Kstep 1/1000  elapsed");
}

TEST(ProgressReporterTest, TerminalModePrintKeepsTheLiveLineBelow) {
  std::ostringstream out;
  FakeClock clock;
  {
    ProgressReporter progress(out, true, 10, 0, clock.Fn());
    progress.Step(1, {{"loss", 1}}, false);
    progress.Print("checkpoint saved");
  }
  EXPECT_EQ(out.str(),
            "\r\033[Kstep 1/10  elapsed 0s  eta ?  loss 1.0000"
            "\r\033[Kcheckpoint saved\n"
            "step 1/10  elapsed 0s  eta ?  loss 1.0000"
            "\n");  // the destructor ends the live line
}

TEST(ProgressReporterTest, TerminalModePhaseIsThrottledAndEndsItsLine) {
  std::ostringstream out;
  FakeClock clock;
  ProgressReporter progress(out, true, 10, 0, clock.Fn());
  for (int done = 0; done <= 10; ++done) {
    progress.Phase("reference log-probs", done, 10);
    clock.now += 0.15;
  }
  EXPECT_EQ(out.str(),
            "\r\033[Kreference log-probs 0/10 (0%)  elapsed 0s  eta ?"
            "\r\033[Kreference log-probs 2/10 (20%)  elapsed 0s  eta 1s"
            "\r\033[Kreference log-probs 4/10 (40%)  elapsed 0s  eta 0s"
            "\r\033[Kreference log-probs 6/10 (60%)  elapsed 0s  eta 0s"
            "\r\033[Kreference log-probs 8/10 (80%)  elapsed 1s  eta 0s"
            "\r\033[Kreference log-probs 10/10 (100%)  done in 1s\n");
}

}  // namespace
}  // namespace prefopt::metrics
