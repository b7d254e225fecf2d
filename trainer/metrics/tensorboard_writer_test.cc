#include "trainer/metrics/tensorboard_writer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "proto/tensorboard/event.pb.h"
#include "trainer/io/test_util.h"
#include "trainer/util/crc32c.h"

namespace prefopt::metrics {
namespace {

std::string NewTempDir(const std::string& name) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  std::filesystem::remove_all(dir);
  return dir;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t LittleEndian(const std::string& bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) {
    v = (v << 8) | static_cast<uint8_t>(bytes[at + i]);
  }
  return v;
}

// Splits a TFRecord file into its records, checking both CRCs of each.
::testing::AssertionResult ReadRecords(const std::string& bytes,
                                       std::vector<std::string>* records) {
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12) {
      return ::testing::AssertionFailure() << "truncated header at " << at;
    }
    const uint64_t length = LittleEndian(bytes, at, 8);
    if (LittleEndian(bytes, at + 8, 4) !=
        util::MaskedCrc32c(bytes.data() + at, 8)) {
      return ::testing::AssertionFailure() << "bad length CRC at " << at;
    }
    if (bytes.size() - at - 12 < length + 4) {
      return ::testing::AssertionFailure() << "truncated data at " << at;
    }
    const std::string data = bytes.substr(at + 12, length);
    if (LittleEndian(bytes, at + 12 + length, 4) !=
        util::MaskedCrc32c(data.data(), data.size())) {
      return ::testing::AssertionFailure() << "bad data CRC at " << at;
    }
    records->push_back(data);
    at += 12 + length + 4;
  }
  return ::testing::AssertionSuccess();
}

std::string OnlyFileIn(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    files.push_back(entry.path().string());
  }
  EXPECT_EQ(files.size(), 1u);
  return files.empty() ? "" : files[0];
}

TEST(TfRecordTest, MatchesTensorBoardRecordWriter) {
  // Bytes written by tensorboard.summary.writer.record_writer.RecordWriter
  // (tensorboard 2.21) for b"hello" and b"".
  EXPECT_EQ(absl::BytesToHexString(TfRecord("hello")),
            "0500000000000000eab2043e68656c6c6fbb1f1c19");
  EXPECT_EQ(absl::BytesToHexString(TfRecord("")),
            "000000000000000029039807d8ea82a2");
}

TEST(TensorBoardTagTest, PrefixesTrainingMetrics) {
  EXPECT_EQ(TensorBoardTag("loss"), "train/loss");
  EXPECT_EQ(TensorBoardTag("rewards/chosen"), "train/rewards/chosen");
  EXPECT_EQ(TensorBoardTag("eval/loss"), "eval/loss");
  EXPECT_EQ(TensorBoardTag("test/rewards/margins"), "test/rewards/margins");
  EXPECT_EQ(TensorBoardTag("train/loss"), "train/loss");
  EXPECT_EQ(TensorBoardTag("evaluation"), "train/evaluation");
}

TEST(TensorBoardWriterTest, WritesFileVersionThenOneEventPerStep) {
  const std::string dir = NewTempDir("events") + "/nested/logs";
  const double before = std::chrono::duration<double>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
  std::string path;
  {
    auto writer = TensorBoardWriter::Open(dir);
    ASSERT_TRUE(writer.ok()) << writer.status();
    path = writer->path();
    ASSERT_TRUE(
        writer->Write(1, {{"loss", 0.6931}, {"rewards/chosen", 0.0}}).ok());
    ASSERT_TRUE(
        writer->Write(2, {{"loss", 0.5}, {"eval/loss", -1.25e-3}}).ok());
    // Flushed per step: readable before the writer is closed.
    std::vector<std::string> records;
    ASSERT_TRUE(ReadRecords(ReadAll(path), &records));
    EXPECT_EQ(records.size(), 3u);
    ASSERT_TRUE(writer->Write(3, {}).ok());
  }
  EXPECT_EQ(OnlyFileIn(dir), path);
  const std::string name = std::filesystem::path(path).filename().string();
  EXPECT_TRUE(absl::StartsWith(name, "events.out.tfevents.")) << name;
  EXPECT_TRUE(absl::EndsWith(
      name, absl::StrCat(".", static_cast<int64_t>(getpid()), ".prefopt")))
      << name;
  {
    // Two more writers of this process in the same second (or not): each
    // gets a file of its own, and the first file is left alone.
    auto second = TensorBoardWriter::Open(dir);
    auto third = TensorBoardWriter::Open(dir);
    ASSERT_TRUE(second.ok()) << second.status();
    ASSERT_TRUE(third.ok()) << third.status();
    EXPECT_NE(second->path(), path);
    EXPECT_NE(third->path(), second->path());
    EXPECT_NE(third->path(), path);
  }

  std::vector<std::string> records;
  ASSERT_TRUE(ReadRecords(ReadAll(path), &records));
  ASSERT_EQ(records.size(), 4u);
  std::vector<tensorboard::Event> events(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    ASSERT_TRUE(events[i].ParseFromString(records[i])) << i;
    EXPECT_GE(events[i].wall_time(), std::floor(before)) << i;
    EXPECT_LT(events[i].wall_time(), before + 60) << i;
  }
  EXPECT_EQ(events[0].file_version(), "brain.Event:2");
  EXPECT_FALSE(events[0].has_summary());

  EXPECT_EQ(events[1].step(), 1);
  ASSERT_EQ(events[1].summary().value_size(), 2);
  EXPECT_EQ(events[1].summary().value(0).tag(), "train/loss");
  EXPECT_EQ(events[1].summary().value(0).simple_value(), 0.6931f);
  EXPECT_EQ(events[1].summary().value(1).tag(), "train/rewards/chosen");
  // A zero must still be on the wire, or TensorBoard sees a value-less tag.
  EXPECT_EQ(events[1].summary().value(1).value_case(),
            tensorboard::Summary::Value::kSimpleValue);

  EXPECT_EQ(events[2].step(), 2);
  ASSERT_EQ(events[2].summary().value_size(), 2);
  EXPECT_EQ(events[2].summary().value(0).tag(), "eval/loss");
  EXPECT_EQ(events[2].summary().value(0).simple_value(), -1.25e-3f);
  EXPECT_EQ(events[2].summary().value(1).tag(), "train/loss");
  EXPECT_EQ(events[2].summary().value(1).simple_value(), 0.5f);

  EXPECT_EQ(events[3].step(), 3);
  EXPECT_TRUE(events[3].has_summary());
  EXPECT_EQ(events[3].summary().value_size(), 0);
}

TEST(TensorBoardWriterTest, SessionStartMarksAResumedRun) {
  const std::string dir = NewTempDir("resumed");
  auto writer = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->WriteSessionStart(5).ok());
  ASSERT_TRUE(writer->Write(5, {{"loss", 0.25}}).ok());
  std::vector<std::string> records;
  ASSERT_TRUE(ReadRecords(ReadAll(writer->path()), &records));
  ASSERT_EQ(records.size(), 3u);
  tensorboard::Event start;
  ASSERT_TRUE(start.ParseFromString(records[1]));
  EXPECT_EQ(start.step(), 5);
  EXPECT_EQ(start.session_log().status(), tensorboard::SessionLog::START);
  EXPECT_FALSE(start.has_summary());
}

TEST(TensorBoardWriterTest, ReaderRejectsACorruptedRecord) {
  const std::string dir = NewTempDir("corrupt");
  auto writer = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->Write(7, {{"loss", 1.0}}).ok());
  std::string bytes = ReadAll(writer->path());
  bytes[bytes.size() - 6] ^= 1;  // inside the last record's data
  std::vector<std::string> records;
  EXPECT_FALSE(ReadRecords(bytes, &records));
}

TEST(TensorBoardWriterTest, OpenNamesTheDirectoryThatCannotBeCreated) {
  const std::string dir = NewTempDir("blocked");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/file") << "x";
  auto writer = TensorBoardWriter::Open(dir + "/file/logs");
  ASSERT_FALSE(writer.ok());
  EXPECT_TRUE(absl::StrContains(writer.status().message(), dir + "/file/logs"))
      << writer.status();
}

TEST(TensorBoardWriterTest, FullDiskLeavesOnlyCompleteRecords) {
  const std::string dir = NewTempDir("full");
  auto writer = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->Write(1, {{"loss", 0.5}}).ok());
  const std::string before = ReadAll(writer->path());
  std::map<std::string, double> many;
  for (int i = 0; i < 20; ++i) many["metric_" + std::to_string(i)] = i;
  {
    io::testing::ScopedFileSizeLimit limit(before.size() + 16);
    const absl::Status s = writer->Write(2, many);
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(absl::StrContains(s.message(), writer->path())) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "File too large")) << s;
  }
  EXPECT_EQ(ReadAll(writer->path()), before);
}

}  // namespace
}  // namespace prefopt::metrics
