#include "trainer/util/crc32c.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "trainer/util/rng.h"

namespace prefopt::util {
namespace {

uint32_t Of(const std::string& s) { return Crc32c(s.data(), s.size()); }

TEST(Crc32cTest, StandardCheckValue) {
  // The "check" value of the CRC-32C catalogue entry.
  EXPECT_EQ(Of("123456789"), 0xE3069283u);
  EXPECT_EQ(Of(""), 0u);
}

TEST(Crc32cTest, Rfc3720Vectors) {
  // RFC 3720 (iSCSI), appendix B.4.
  std::string zeros(32, '\0'), ones(32, '\xff'), up(32, 0), down(32, 0);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(Of(zeros), 0x8A9136AAu);
  EXPECT_EQ(Of(ones), 0x62A8AB43u);
  EXPECT_EQ(Of(up), 0x46DD794Eu);
  EXPECT_EQ(Of(down), 0x113FDB5Cu);
}

TEST(Crc32cTest, HardwareAndTableAgree) {
  if (!internal::HasCrc32cInstruction()) {
    GTEST_SKIP() << "this CPU has no SSE4.2 crc32 instruction";
  }
  Rng rng(7);
  std::vector<uint8_t> bytes(4099);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng.NextU64());
  // Every length and misalignment up to a few words, then a long buffer.
  for (size_t start = 0; start < 9; ++start) {
    for (size_t n = 0; n < 40; ++n) {
      EXPECT_EQ(internal::Crc32cHardware(bytes.data() + start, n, 0),
                internal::Crc32cTable(bytes.data() + start, n, 0))
          << "start " << start << " n " << n;
    }
  }
  EXPECT_EQ(internal::Crc32cHardware(bytes.data(), bytes.size(), 0x12345678u),
            internal::Crc32cTable(bytes.data(), bytes.size(), 0x12345678u));
  EXPECT_EQ(internal::Crc32cTable("123456789", 9, 0), 0xE3069283u);
}

TEST(Crc32cTest, Extends) {
  const std::string a = "The quick brown fox ", b = "jumps over the lazy dog";
  EXPECT_EQ(Crc32c(b.data(), b.size(), Of(a)), Of(a + b));
  EXPECT_EQ(internal::Crc32cTable(b.data(), b.size(), Of(a)), Of(a + b));
}

TEST(Crc32cTest, Masked) {
  // Computed independently (bitwise CRC and the TFRecord mask in Python).
  EXPECT_EQ(MaskedCrc32c("123456789", 9), 0xC78AB0E5u);
  EXPECT_EQ(MaskCrc32c(0xE3069283u), 0xC78AB0E5u);
  const uint64_t length = 24;  // a TFRecord length header, little-endian
  EXPECT_EQ(MaskedCrc32c(&length, sizeof(length)), 0x224B7FA3u);
}

}  // namespace
}  // namespace prefopt::util
