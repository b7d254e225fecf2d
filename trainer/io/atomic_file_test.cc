#include "trainer/io/atomic_file.h"

#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using testing::CountEntriesContaining;
using testing::ErrorContains;
using testing::Exists;
using testing::NewTempDir;
using testing::ReadBytes;
using testing::ScopedFileSizeLimit;
using testing::WriteBytes;

TEST(AtomicFileWriterTest, CommitReplacesContents) {
  const std::string dir = NewTempDir("commit");
  const std::string path = dir + "/file.txt";
  WriteBytes(path, "old");
  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->Append("new ").ok());
  ASSERT_TRUE(writer->Append("contents").ok());
  EXPECT_EQ(ReadBytes(path), "old");  // unchanged until Commit
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 1);
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(ReadBytes(path), "new contents");
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);
  EXPECT_TRUE(ErrorContains(writer->Append("x"), {path, "already finished"}));
  EXPECT_TRUE(ErrorContains(writer->Commit(), {path, "already finished"}));
}

TEST(AtomicFileWriterTest, AbandonedWriterLeavesNothing) {
  const std::string dir = NewTempDir("abandon");
  const std::string path = dir + "/file.txt";
  {
    absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE(writer->Append("partial").ok());
    AtomicFileWriter moved = *std::move(writer);
  }
  EXPECT_FALSE(Exists(path));
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);
}

TEST(AtomicFileWriterTest, MissingDirectoryIsAnError) {
  const std::string path = NewTempDir("missing") + "/no/such/file.txt";
  EXPECT_TRUE(ErrorContains(WriteFileAtomically(path, "x"),
                            {"no/such/file.txt.tmp.", "No such file"}));
}

TEST(AtomicFileWriterTest, FullDiskKeepsTheOldContents) {
  const std::string dir = NewTempDir("full");
  const std::string path = dir + "/file.txt";
  WriteBytes(path, "old");
  {
    ScopedFileSizeLimit limit(100);
    EXPECT_TRUE(ErrorContains(WriteFileAtomically(path, std::string(4096, 'x')),
                              {"cannot write", path, "File too large"}));
  }
  EXPECT_EQ(ReadBytes(path), "old");
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);
}

TEST(AtomicFileWriterTest, LinkAtTheTemporaryNameIsNotFollowed) {
  const std::string dir = NewTempDir("temp_link");
  const std::string victim = NewTempDir("temp_link_victim") + "/victim";
  WriteBytes(victim, "victim");
  const std::string path = dir + "/file.txt";
  const std::string temp = path + ".tmp." + std::to_string(getpid());
  ASSERT_EQ(symlink(victim.c_str(), temp.c_str()), 0);
  ASSERT_TRUE(WriteFileAtomically(path, "new").ok());
  EXPECT_EQ(ReadBytes(path), "new");
  EXPECT_EQ(ReadBytes(victim), "victim");
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);
}

TEST(AtomicFileWriterTest, LinkAtThePathIsReplacedNotFollowed) {
  const std::string dir = NewTempDir("path_link");
  const std::string victim = NewTempDir("path_link_victim") + "/victim";
  WriteBytes(victim, "victim");
  const std::string path = dir + "/file.txt";
  ASSERT_EQ(symlink(victim.c_str(), path.c_str()), 0);
  ASSERT_TRUE(WriteFileAtomically(path, "new").ok());
  EXPECT_EQ(ReadBytes(victim), "victim");
  char target[16];
  EXPECT_EQ(readlink(path.c_str(), target, sizeof(target)), -1);
  EXPECT_EQ(ReadBytes(path), "new");
}

TEST(AtomicFileWriterTest, WriteFileAtomically) {
  const std::string path = NewTempDir("whole") + "/file.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "abc").ok());
  EXPECT_EQ(ReadBytes(path), "abc");
}

}  // namespace
}  // namespace prefopt::io
