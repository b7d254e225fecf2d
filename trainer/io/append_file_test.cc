#include "trainer/io/append_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using testing::ErrorContains;
using testing::NewTempDir;
using testing::ReadBytes;
using testing::ScopedFileSizeLimit;
using testing::WriteBytes;

TEST(AppendFileTest, AppendsAfterTheKeptContents) {
  const std::string path = NewTempDir("append") + "/log";
  WriteBytes(path, "one\n");
  absl::StatusOr<AppendFile> file =
      AppendFile::Open(path, AppendFile::Mode::kOpenOrCreate);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 4u);
  ASSERT_TRUE(file->Append("two\n").ok());
  EXPECT_EQ(*file->ReadAll(), "one\ntwo\n");
  ASSERT_TRUE(file->Truncate(4).ok());
  ASSERT_TRUE(file->Append("three\n").ok());
  EXPECT_EQ(ReadBytes(path), "one\nthree\n");
}

TEST(AppendFileTest, CreateNewRefusesAnExistingFile) {
  const std::string path = NewTempDir("exclusive") + "/log";
  WriteBytes(path, "kept");
  const absl::StatusOr<AppendFile> file =
      AppendFile::Open(path, AppendFile::Mode::kCreateNew);
  EXPECT_TRUE(absl::IsAlreadyExists(file.status())) << file.status();
  EXPECT_EQ(ReadBytes(path), "kept");
}

TEST(AppendFileTest, FullDiskLeavesTheLastCompleteRecord) {
  const std::string path = NewTempDir("full") + "/log";
  absl::StatusOr<AppendFile> file =
      AppendFile::Open(path, AppendFile::Mode::kOpenOrCreate);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(file->Append("complete\n").ok());
  {
    ScopedFileSizeLimit limit(64);
    EXPECT_TRUE(ErrorContains(file->Append(std::string(100, 'x') + "\n"),
                              {"cannot write", path, "File too large",
                               "ends after its last complete record"}));
  }
  EXPECT_EQ(ReadBytes(path), "complete\n");
  EXPECT_EQ(file->size(), 9u);
  ASSERT_TRUE(file->Append("next\n").ok());
  EXPECT_EQ(ReadBytes(path), "complete\nnext\n");
}

TEST(AppendFileTest, SymbolicLinkIsRefusedAndItsTargetKept) {
  const std::string dir = NewTempDir("link");
  const std::string victim = NewTempDir("link_victim") + "/victim";
  WriteBytes(victim, "victim");
  const std::string path = dir + "/log";
  ASSERT_EQ(symlink(victim.c_str(), path.c_str()), 0);
  for (AppendFile::Mode mode :
       {AppendFile::Mode::kOpenOrCreate, AppendFile::Mode::kCreateNew}) {
    const absl::StatusOr<AppendFile> file = AppendFile::Open(path, mode);
    EXPECT_FALSE(file.ok());
  }
  EXPECT_TRUE(ErrorContains(
      AppendFile::Open(path, AppendFile::Mode::kOpenOrCreate).status(),
      {path, "symbolic link"}));
  EXPECT_EQ(ReadBytes(victim), "victim");
}

TEST(AppendFileTest, FifoIsRefused) {
  const std::string path = NewTempDir("fifo") + "/log";
  ASSERT_EQ(mkfifo(path.c_str(), 0644), 0);
  EXPECT_TRUE(ErrorContains(
      AppendFile::Open(path, AppendFile::Mode::kOpenOrCreate).status(),
      {path, "not a regular file"}));
}

}  // namespace
}  // namespace prefopt::io
