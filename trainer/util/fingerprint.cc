#include "trainer/util/fingerprint.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/util/input_file.h"

namespace prefopt::util {
namespace {

uint64_t Mix(uint64_t state, uint64_t word) {
  state ^= word * 0x9E3779B97F4A7C15ull;
  state = (state ^ (state >> 29)) * 0xBF58476D1CE4E5B9ull;
  return state ^ (state >> 32);
}

}  // namespace

void Fingerprinter::Update(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  length_ += n;
  while (n > 0 && tail_len_ > 0 && tail_len_ < 8) {
    tail_[tail_len_++] = *p++;
    --n;
    if (tail_len_ == 8) {
      uint64_t w;
      std::memcpy(&w, tail_, 8);
      state_ = Mix(state_, w);
      tail_len_ = 0;
    }
  }
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    state_ = Mix(state_, w);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    tail_[tail_len_++] = *p++;
    --n;
  }
}

uint64_t Fingerprinter::Value() const {
  uint64_t w = 0;
  std::memcpy(&w, tail_, tail_len_);
  uint64_t s = Mix(state_, w);
  return Mix(s, length_);
}

absl::StatusOr<uint64_t> FingerprintFile(const std::string& path) {
  if (absl::Status s = CheckInputFile(path); !s.ok()) return s;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  Fingerprinter fp;
  std::vector<char> buf(1 << 20);
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    fp.Update(buf.data(), got);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return fp.Value();
}

std::string FingerprintHex(uint64_t v) { return absl::StrFormat("%016x", v); }

}  // namespace prefopt::util
