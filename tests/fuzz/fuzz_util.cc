#include "tests/fuzz/fuzz_util.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace prefopt::fuzz {
namespace {

namespace fs = std::filesystem;

void RemoveScratchDir() {
  std::error_code ignored;
  fs::remove_all(ScratchDir(), ignored);
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace

const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* base = std::getenv("TEST_TMPDIR");
    if (base == nullptr || *base == '\0') base = std::getenv("TMPDIR");
    if (base == nullptr || *base == '\0') base = "/tmp";
    std::string pattern = std::string(base) + "/prefopt_fuzz_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      Die("cannot make a scratch folder under " + std::string(base));
    }
    auto* made = new std::string(pattern);
    if (std::getenv("PREFOPT_FUZZ_KEEP_SCRATCH") != nullptr) {
      std::fprintf(stderr, "fuzz: scratch folder %s is kept\n", made->c_str());
    } else {
      std::atexit(RemoveScratchDir);
    }
    return made;
  }();
  return *dir;
}

std::string WriteScratchFile(const std::string& relative,
                             std::string_view bytes) {
  const fs::path path = fs::path(ScratchDir()) / relative;
  std::error_code error;
  fs::create_directories(path.parent_path(), error);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) Die("cannot write " + path.string());
  return path.string();
}

void CheckErrorNames(const absl::Status& status, std::string_view needle) {
  if (status.ok() ||
      std::string(status.message()).find(needle) != std::string::npos) {
    return;
  }
  Die("the error does not name " + std::string(needle) + ": " +
      status.ToString());
}

std::vector<std::string_view> SplitParts(std::string_view input,
                                         size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = input.find(kPartSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(input.substr(0, at));
    input.remove_prefix(at + kPartSeparator.size());
  }
  parts.push_back(input);
  return parts;
}

}  // namespace prefopt::fuzz
