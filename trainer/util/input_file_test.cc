#include "trainer/util/input_file.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prefopt::util {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

TEST(CheckInputFileTest, RegularAndMissingFilesPass) {
  const std::string path = TempPath("regular.txt");
  std::ofstream(path) << "data\n";
  EXPECT_TRUE(CheckInputFile(path).ok());
  // The caller's open reports a missing file in its own words.
  EXPECT_TRUE(CheckInputFile(TempPath("missing.txt")).ok());
}

TEST(CheckInputFileTest, FifoIsRefusedWithoutBlocking) {
  const std::string path = TempPath("pipe.jsonl");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  const absl::Status s = CheckInputFile(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(path + " is a FIFO (named pipe), not a regular file"));
}

TEST(CheckInputFileTest, DevicesAndDirectoriesAreRefused) {
  EXPECT_THAT(std::string(CheckInputFile("/dev/zero").message()),
              HasSubstr("/dev/zero is a character device"));
  EXPECT_THAT(std::string(CheckInputFile(TempPath("")).message()),
              HasSubstr("is a directory"));
}

}  // namespace
}  // namespace prefopt::util
