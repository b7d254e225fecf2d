#include "trainer/util/clip_text.h"

#include <string>

#include "gtest/gtest.h"

namespace prefopt::util {
namespace {

TEST(ClipTextTest, ShortTextIsKept) {
  EXPECT_EQ(ClipText("betta"), "betta");
  EXPECT_EQ(ClipText(std::string(kMaxEchoBytes, 'x')),
            std::string(kMaxEchoBytes, 'x'));
}

TEST(ClipTextTest, LongTextKeepsItsStartAndSaysItsSize) {
  const std::string name(5 << 20, 'a');
  EXPECT_EQ(ClipText(name),
            std::string(kMaxEchoBytes, 'a') + "\u2026 (5242880 bytes)");
  EXPECT_EQ(ClipText("abcdef", 3), "abc\u2026 (6 bytes)");
}

TEST(ClipTextTest, NeverSplitsAUtf8Character) {
  // "aé" is 61 C3 A9: a cut after 2 bytes would leave half of the é.
  EXPECT_EQ(ClipText("a\u00e9z", 2), "a\u2026 (4 bytes)");
}

}  // namespace
}  // namespace prefopt::util
