#include "trainer/io/run_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using testing::ErrorContains;
using testing::NewTempDir;
using testing::WriteBytes;

TEST(CheckRunDirectoryTest, OwnDirectoryAndALinkToItAreAccepted) {
  const std::string dir = NewTempDir("own");
  EXPECT_TRUE(CheckRunDirectory(dir).ok());
  ASSERT_EQ(chmod(dir.c_str(), 0775), 0);
  EXPECT_TRUE(CheckRunDirectory(dir).ok());
  const std::string link = dir + "_link";
  ASSERT_EQ(symlink(dir.c_str(), link.c_str()), 0);
  EXPECT_TRUE(CheckRunDirectory(link).ok());
}

TEST(CheckRunDirectoryTest, WorldWritableIsRefusedEvenWithTheStickyBit) {
  const std::string dir = NewTempDir("world");
  for (mode_t mode : {0777, 01777}) {
    ASSERT_EQ(chmod(dir.c_str(), mode), 0);
    EXPECT_TRUE(ErrorContains(CheckRunDirectory(dir),
                              {"run_dir: ", dir, "writable by every user"}));
  }
}

TEST(CheckRunDirectoryTest, AnotherUsersDirectoryIsRefused) {
  const std::string dir = NewTempDir("other");
  // 65534: nobody. Only root may give a directory away.
  if (chown(dir.c_str(), 65534, 65534) != 0) {
    GTEST_SKIP() << "chown needs root";
  }
  EXPECT_TRUE(ErrorContains(CheckRunDirectory(dir),
                            {"run_dir: ", dir, "owned by uid 65534"}));
}

TEST(CheckRunDirectoryTest, FileIsRefused) {
  const std::string file = NewTempDir("file") + "/file";
  WriteBytes(file, "x");
  EXPECT_TRUE(
      ErrorContains(CheckRunDirectory(file), {file, "not a directory"}));
}

}  // namespace
}  // namespace prefopt::io
