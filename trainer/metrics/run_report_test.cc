#include "trainer/metrics/run_report.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "trainer/metrics/metrics_log.h"

namespace prefopt::metrics {
namespace {

std::string NewRunDir(const std::string& name) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The <svg> elements of `html`, by their <title>.
std::map<std::string, std::string> Charts(const std::string& html) {
  std::map<std::string, std::string> charts;
  size_t at = 0;
  while ((at = html.find("<svg", at)) != std::string::npos) {
    const size_t end = html.find("</svg>", at);
    const std::string svg = html.substr(at, end - at);
    const size_t title = svg.find("<title>") + 7;
    charts[svg.substr(title, svg.find("</title>") - title)] = svg;
    at = end;
  }
  return charts;
}

// The number of points of the data polyline of a chart.
int DataPoints(const std::string& svg) {
  const std::string marker = "<polyline points=\"";
  size_t at = svg.find("\" class=\"data\"");
  if (at == std::string::npos) return -1;
  const size_t begin = svg.rfind(marker, at) + marker.size();
  const std::vector<std::string> points =
      absl::StrSplit(svg.substr(begin, at - begin), ' ');
  return static_cast<int>(points.size());
}

void ExpectTicks(const std::vector<double>& ticks,
                 const std::vector<double>& expected) {
  ASSERT_EQ(ticks.size(), expected.size());
  for (size_t i = 0; i < ticks.size(); ++i) {
    EXPECT_NEAR(ticks[i], expected[i], 1e-12 * std::abs(expected.back())) << i;
  }
}

TEST(AxisTicksTest, CoversTheRangeWithRoundSteps) {
  ExpectTicks(AxisTicks(0, 1, 5), {0, 0.2, 0.4, 0.6, 0.8, 1});
  ExpectTicks(AxisTicks(3, 97, 5), {0, 20, 40, 60, 80, 100});
  ExpectTicks(AxisTicks(-0.3, 0.45, 5), {-0.4, -0.2, 0, 0.2, 0.4, 0.6});
  ExpectTicks(AxisTicks(1, 3, 6), {1, 1.5, 2, 2.5, 3});
  ExpectTicks(AxisTicks(1e-5, 3e-5, 5), {1e-5, 1.5e-5, 2e-5, 2.5e-5, 3e-5});
  ExpectTicks(AxisTicks(0.69314, 0.69318, 5),
              {0.69314, 0.69315, 0.69316, 0.69317, 0.69318});
  ExpectTicks(AxisTicks(10, 2000, 6), {0, 500, 1000, 1500, 2000});
}

TEST(RunReportTest, OneChartPerChangingMetric) {
  const std::string dir = NewRunDir("report");
  {
    auto log = MetricsLog::Open(dir + "/metrics.jsonl");
    ASSERT_TRUE(log.ok()) << log.status();
    for (int step = 10; step <= 50; step += 10) {
      std::map<std::string, double> m = {
          {"loss", 1.0 / step},
          {"lr", 1e-3},  // constant: no chart
          {"rewards/accuracies", step == 30 ? 0.0 / 0.0 : 0.1 * step / 10},
          {"rewards/margins", -0.5 + 0.01 * step}};
      ASSERT_TRUE(log->Write(step, m).ok());
    }
  }
  const std::string config = "model { n_layer: 2 }\nrun_dir: \"<a&b>\"\n";
  ASSERT_TRUE(WriteRunReport(dir, config,
                             {{"eval/loss", "0.4321"},
                              {"eval/rewards/accuracies", "0.75"}})
                  .ok());
  const std::string html = ReadAll(dir + "/report.html");
  EXPECT_TRUE(absl::StartsWith(html, "<!DOCTYPE html>"));

  const std::map<std::string, std::string> charts = Charts(html);
  ASSERT_EQ(charts.size(), 3u) << html;
  EXPECT_EQ(DataPoints(charts.at("loss")), 5);
  EXPECT_EQ(DataPoints(charts.at("rewards/accuracies")), 4);  // one null
  EXPECT_EQ(DataPoints(charts.at("rewards/margins")), 5);
  EXPECT_TRUE(absl::StrContains(charts.at("rewards/accuracies"),
                                "1 non-finite left out"));
  // Loss first; min and max in the subtitle; axis labels.
  EXPECT_LT(html.find("<title>loss</title>"),
            html.find("<title>rewards/accuracies</title>"));
  EXPECT_TRUE(absl::StrContains(charts.at("loss"),
                                "min 0.02 (step 50)  max 0.1 (step 10)"));
  EXPECT_TRUE(absl::StrContains(charts.at("loss"), ">0.10</text>"));
  EXPECT_TRUE(absl::StrContains(charts.at("loss"), ">50</text>"));
  EXPECT_TRUE(absl::StrContains(charts.at("loss"), ">step</text>"));

  // Every metric, the constant one included, in the final values.
  EXPECT_TRUE(absl::StrContains(html,
                                "<tr><td>lr</td><td class=\"num\">0.001</td>"
                                "<td colspan=\"2\">constant</td></tr>"));
  EXPECT_TRUE(absl::StrContains(
      html, "<tr><td>eval/rewards/accuracies</td><td class=\"num\">0.75"));
  EXPECT_TRUE(absl::StrContains(
      html, "<pre>model { n_layer: 2 }\nrun_dir: &quot;&lt;a&amp;b&gt;&quot;"));
  // Self-contained.
  EXPECT_FALSE(absl::StrContains(html, "<script"));
  // No address but each chart's SVG namespace.
  int addresses = 0;
  for (size_t at = html.find("http"); at != std::string::npos;
       at = html.find("http", at + 1)) {
    EXPECT_EQ(html.compare(at, 26, "http://www.w3.org/2000/svg"), 0);
    ++addresses;
  }
  EXPECT_EQ(addresses, 3);
  // Written atomically: no temporary file is left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 2);
}

TEST(RunReportTest, SaysWhenThereIsNoEvaluationOrChange) {
  const std::string dir = NewRunDir("flat");
  std::ofstream(dir + "/metrics.jsonl") << "{\"step\": 1, \"loss\": 0.5}\n\n";
  ASSERT_TRUE(WriteRunReport(dir, "", {}).ok());
  const std::string html = ReadAll(dir + "/report.html");
  EXPECT_TRUE(Charts(html).empty());
  EXPECT_TRUE(absl::StrContains(html, "No metric changed during the run."));
  EXPECT_TRUE(absl::StrContains(html, "No evaluation in this run."));
}

TEST(RunReportTest, ErrorsNameTheFileAndLine) {
  const std::string dir = NewRunDir("bad");
  absl::Status s = WriteRunReport(dir, "", {});
  EXPECT_TRUE(absl::StrContains(s.message(), dir + "/metrics.jsonl")) << s;

  std::ofstream(dir + "/metrics.jsonl")
      << "{\"step\": 1, \"loss\": 0.5}\n{\"step\": 2, \"loss\"\n";
  s = WriteRunReport(dir, "", {});
  EXPECT_TRUE(absl::StrContains(s.message(), dir + "/metrics.jsonl:2:")) << s;

  std::ofstream(dir + "/metrics.jsonl") << "{\"loss\": 0.5}\n";
  s = WriteRunReport(dir, "", {});
  EXPECT_TRUE(absl::StrContains(s.message(), "metrics.jsonl:1: no numeric"))
      << s;
  EXPECT_FALSE(std::filesystem::exists(dir + "/report.html"));
}

}  // namespace
}  // namespace prefopt::metrics
