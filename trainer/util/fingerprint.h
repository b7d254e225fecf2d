// Stable 64-bit fingerprints of bytes, for cache keys (reference log-probs,
// tokenized data) that must mean the same thing across runs and machines
// (absl::Hash is salted per process, so it cannot be used here).
#ifndef PREFOPT_TRAINER_UTIL_FINGERPRINT_H_
#define PREFOPT_TRAINER_UTIL_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace prefopt::util {

// Incremental fingerprint: feed bytes, read the 64-bit value. Processes 8 bytes
// at a time with a multiply-xorshift mix (fast enough to hash model weights).
class Fingerprinter {
 public:
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  template <typename T>
  void UpdateValue(const T& v) {
    Update(&v, sizeof(v));
  }
  uint64_t Value() const;

 private:
  uint64_t state_ = 0x6A09E667F3BCC908ull;
  uint64_t length_ = 0;
  unsigned char tail_[8] = {};
  size_t tail_len_ = 0;
};

// Fingerprint of a whole file's contents; error names the file.
absl::StatusOr<uint64_t> FingerprintFile(const std::string& path);

// 16 lowercase hex digits.
std::string FingerprintHex(uint64_t v);

}  // namespace prefopt::util

#endif  // PREFOPT_TRAINER_UTIL_FINGERPRINT_H_
