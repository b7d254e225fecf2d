#include "trainer/tokenizer/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kFffd[] = "\xEF\xBF\xBD";

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(Utf8Test, ValidPrefix) {
  EXPECT_EQ(ValidUtf8Prefix(""), 0u);
  EXPECT_EQ(ValidUtf8Prefix("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"), 10u);
  EXPECT_EQ(ValidUtf8Prefix("ab\xC0\xAF"), 2u);            // overlong
  EXPECT_EQ(ValidUtf8Prefix("a\xED\xA0\x80"), 1u);         // surrogate
  EXPECT_EQ(ValidUtf8Prefix("\xF4\x90\x80\x80"), 0u);      // above U+10FFFF
  EXPECT_EQ(ValidUtf8Prefix("\xE2\x82\xAC\xE2\x82"), 3u);  // truncated
}

// Expected strings are what Python's bytes.decode("utf-8", "replace") and
// Rust's String::from_utf8_lossy give: one U+FFFD per maximal ill-formed
// subsequence.
TEST(Utf8Test, LossyReplacesMaximalIllFormedSubsequences) {
  EXPECT_EQ(Utf8Lossy("\xE0\x80"), Repeat(kFffd, 2));
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), kFffd);
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), Repeat(kFffd, 3));
  EXPECT_EQ(Utf8Lossy("a\xC3"), std::string("a") + kFffd);
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"), Repeat(kFffd, 4));
  EXPECT_EQ(Utf8Lossy("\xC0\xAF"), Repeat(kFffd, 2));
  EXPECT_EQ(Utf8Lossy("\xE2\x82\xAC\xE2\x82"),
            std::string("\xE2\x82\xAC") + kFffd);
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98\x80x\x80\xFF"),
            std::string("\xF0\x9F\x98\x80x") + kFffd + kFffd);
}

TEST(Utf8Test, DecodeAndEncodeRoundTrip) {
  for (const char32_t c : {0x24u, 0xE9u, 0x20ACu, 0x1F600u, 0x10FFFFu}) {
    std::string utf8;
    AppendUtf8(c, &utf8);
    EXPECT_EQ(ValidUtf8Prefix(utf8), utf8.size());
    EXPECT_EQ(Utf8CharLength(utf8[0]), utf8.size());
    EXPECT_EQ(DecodeUtf8(utf8, 0), c);
    EXPECT_EQ(DecodeLastUtf8("ab" + utf8), c);
  }
}

}  // namespace
}  // namespace prefopt::tokenizer
