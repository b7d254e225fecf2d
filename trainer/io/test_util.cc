#include "trainer/io/test_util.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>

#include "gtest/gtest.h"

namespace prefopt::io::testing {

std::string TestdataPath(std::string_view name) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return std::string(srcdir == nullptr ? "." : srcdir) +
         "/prefopt/trainer/io/testdata/" + std::string(name);
}

std::string NewTempDir(std::string_view name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir =
      std::string(tmp == nullptr ? "/tmp" : tmp) + "/" + std::string(name);
  EXPECT_EQ(mkdir(dir.c_str(), 0755), 0) << dir;
  return dir;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in),
                     std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void CopyDir(const std::string& from, const std::string& to) {
  DIR* d = opendir(from.c_str());
  ASSERT_NE(d, nullptr) << from;
  while (const dirent* entry = readdir(d)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    WriteBytes(to + "/" + name, ReadBytes(from + "/" + name));
  }
  closedir(d);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

int CountEntriesContaining(const std::string& dir, std::string_view part) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = readdir(d)) {
    if (std::string_view(entry->d_name).find(part) != std::string_view::npos) {
      ++count;
    }
  }
  closedir(d);
  return count;
}

::testing::AssertionResult ErrorContains(
    const absl::Status& status, std::initializer_list<std::string_view> parts) {
  if (status.ok()) {
    return ::testing::AssertionFailure() << "expected an error, got OK";
  }
  const std::string message(status.message());
  for (const std::string_view part : parts) {
    if (message.find(part) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "error message \"" << message << "\" lacks \"" << part << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

ScopedFileSizeLimit::ScopedFileSizeLimit(rlim_t max_bytes) {
  EXPECT_EQ(getrlimit(RLIMIT_FSIZE, &saved_), 0);
  saved_handler_ = signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = saved_;
  limit.rlim_cur = max_bytes;
  EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
}

ScopedFileSizeLimit::~ScopedFileSizeLimit() {
  EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &saved_), 0);
  signal(SIGXFSZ, saved_handler_);
}

}  // namespace prefopt::io::testing
