#include "trainer/metrics/metrics_log.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "trainer/io/test_util.h"

namespace prefopt::metrics {
namespace {

std::string TempPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

std::string Contents(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(MetricsLogTest, WritesOneLinePerStepAndCountsThem) {
  const std::string path = TempPath("fresh.jsonl");
  WriteFile(path, "{\"step\": 9}\n");  // an earlier run's: replaced
  auto log = MetricsLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->lines(), 0);
  ASSERT_TRUE(log->Write(1, {{"loss", 0.5}}).ok());
  ASSERT_TRUE(log->Write(2, {{"loss", 0.25}, {"lr", 1e-3}}).ok());
  EXPECT_EQ(log->lines(), 2);
  EXPECT_EQ(Contents(path),
            "{\"step\": 1, \"loss\": 0.5}\n"
            "{\"step\": 2, \"loss\": 0.25, \"lr\": 0.001}\n");
}

TEST(MetricsLogTest, ResumeKeepsTheFirstLinesAndAppends) {
  const std::string path = TempPath("resume.jsonl");
  WriteFile(path,
            "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3}\n{\"step\": 4}\n");
  auto log = MetricsLog::Open(path, 2);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->lines(), 2);
  ASSERT_TRUE(log->Write(3, {{"loss", 1}}).ok());
  EXPECT_EQ(log->lines(), 3);
  EXPECT_EQ(Contents(path),
            "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3, \"loss\": 1}\n");
}

TEST(MetricsLogTest, ResumeDropsAPartialLastLine) {
  const std::string path = TempPath("partial.jsonl");
  WriteFile(path, "{\"step\": 1}\n{\"step\": 2}\n{\"st");
  auto log = MetricsLog::Open(path, 5);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->lines(), 2);
  ASSERT_TRUE(log->Write(3, {}).ok());
  EXPECT_EQ(Contents(path), "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3}\n");
}

TEST(MetricsLogTest, ResumeWithoutAFileStartsOne) {
  const std::string path = TempPath("missing.jsonl");
  auto log = MetricsLog::Open(path, 3);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->lines(), 0);
  ASSERT_TRUE(log->Write(4, {}).ok());
  EXPECT_EQ(Contents(path), "{\"step\": 4}\n");
}

TEST(MetricsLogTest, UnwritableFolderIsNamed) {
  auto log = MetricsLog::Open("/nonexistent-dir/metrics.jsonl");
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.status().message().find("/nonexistent-dir/metrics.jsonl"),
            std::string::npos);
}

TEST(MetricsLogTest, FullDiskLeavesOnlyCompleteLines) {
  const std::string path = TempPath("full.jsonl");
  auto log = MetricsLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_TRUE(log->Write(1, {{"loss", 0.5}}).ok());
  std::map<std::string, double> many;
  for (int i = 0; i < 20; ++i) many["metric_" + std::to_string(i)] = i;
  {
    io::testing::ScopedFileSizeLimit limit(64);
    const absl::Status s = log->Write(2, many);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find(path), std::string::npos) << s;
    EXPECT_NE(s.message().find("File too large"), std::string::npos) << s;
  }
  EXPECT_EQ(log->lines(), 1);
  EXPECT_EQ(Contents(path), "{\"step\": 1, \"loss\": 0.5}\n");
}

TEST(MetricsLogTest, PlantedLinkIsRefusedAndItsTargetKept) {
  const std::string victim = TempPath("victim.txt");
  WriteFile(victim, "victim\n");
  const std::string path = TempPath("link.jsonl");
  ASSERT_EQ(symlink(victim.c_str(), path.c_str()), 0);
  for (int64_t keep_lines : {0, 1}) {
    auto log = MetricsLog::Open(path, keep_lines);
    ASSERT_FALSE(log.ok());
    EXPECT_NE(log.status().message().find(path), std::string::npos);
    EXPECT_NE(log.status().message().find("symbolic link"), std::string::npos)
        << log.status();
  }
  EXPECT_EQ(Contents(victim), "victim\n");
}

}  // namespace
}  // namespace prefopt::metrics
