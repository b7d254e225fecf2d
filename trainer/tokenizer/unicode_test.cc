// The regex layer's Unicode properties against what the Hugging Face
// `tokenizers` library (Oniguruma, Unicode 16) says, code point by code point
// over all scalar values (tests/tokenizer/fixtures/unicode_classes.json), and
// DeepSeek V3's pre-tokenizer on a probe text around every scalar value
// (tests/tokenizer/fixtures/deepseek_style/unicode_probes.json). Both files
// come from tests/tokenizer/generate_unicode_metaspace_fixtures.py.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "trainer/tokenizer/pre_tokenizers.h"
#include "trainer/tokenizer/regex.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kFixtures[] = "tests/tokenizer/fixtures/";
constexpr char32_t kScalarValues = 0x110000 - 0x800;

Json ReadJson(const std::string& path) {
  std::ifstream file(path);
  EXPECT_TRUE(file.good()) << "cannot open " << path;
  std::stringstream contents;
  contents << file.rdbuf();
  return Json::parse(contents.str());
}

bool IsSurrogate(char32_t c) { return c >= 0xD800 && c <= 0xDFFF; }

// The text of every scalar value in order, and the byte offset of each.
struct AllScalars {
  std::string text;
  std::vector<char32_t> at_offset;  // code point starting at a byte offset

  AllScalars() {
    at_offset.reserve(4 * kScalarValues);
    for (char32_t c = 0; c < 0x110000; ++c) {
      if (IsSurrogate(c)) continue;
      const size_t begin = text.size();
      AppendUtf8(c, &text);
      at_offset.resize(text.size(), 0);
      at_offset[begin] = c;
    }
  }
};

// Membership per code point from a flat [first, last, first, last, ...].
std::vector<bool> FromRanges(const Json& flat) {
  std::vector<bool> in(0x110000, false);
  for (size_t i = 0; i + 1 < flat.size(); i += 2) {
    for (uint32_t c = flat[i].get<uint32_t>(); c <= flat[i + 1].get<uint32_t>();
         ++c) {
      in[c] = true;
    }
  }
  return in;
}

// The code points where `got` and `want` differ, as "U+XXXX(+)" (got has it,
// want does not) or "U+XXXX(-)", the first few; and their number.
std::string Differences(const std::vector<bool>& got,
                        const std::vector<bool>& want, int* count) {
  std::vector<std::string> shown;
  *count = 0;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (got[c] == want[c]) continue;
    if ((*count)++ < 12) {
      shown.push_back(absl::StrFormat("U+%04X(%s)", static_cast<uint32_t>(c),
                                      got[c] ? "+" : "-"));
    }
  }
  return absl::StrJoin(shown, " ");
}

TEST(UnicodeTest, PropertiesMatchTokenizersOnEveryCodePoint) {
  const Json fixture =
      ReadJson(std::string(kFixtures) + "unicode_classes.json");
  const AllScalars all;
  int patterns = 0;
  int mismatched_patterns = 0;
  for (const Json& entry : fixture["classes"]) {
    const std::string pattern = entry["pattern"].get<std::string>();
    std::vector<bool> got(0x110000, false);
    if (pattern == "Digits") {
      // The Digits pre-tokenizer's runs alternate between other characters
      // and digits, starting with U+0000.
      absl::StatusOr<std::unique_ptr<PreTokenizer>> digits = ParsePreTokenizer(
          Json{{"type", "Digits"}, {"individual_digits", false}}, "digits");
      ASSERT_TRUE(digits.ok()) << digits.status();
      Pieces pieces;
      pieces.text = all.text;
      pieces.ranges.assign(1, {0, all.text.size()});
      ASSERT_TRUE((*digits)->PreTokenize(&pieces).ok());
      for (size_t i = 1; i < pieces.ranges.size(); i += 2) {
        for (size_t at = pieces.ranges[i].first; at < pieces.ranges[i].second;
             at += Utf8CharLength(all.text[at])) {
          got[all.at_offset[at]] = true;
        }
      }
    } else {
      absl::StatusOr<Regex> regex = Regex::Compile(pattern);
      if (!regex.ok()) {
        ++patterns;
        ++mismatched_patterns;
        ADD_FAILURE() << regex.status();
        continue;
      }
      std::vector<ByteRange> matches;
      ASSERT_TRUE(regex->FindAll(all.text, &matches).ok()) << pattern;
      for (const auto& [begin, end] : matches) {
        for (size_t at = begin; at < end; at += Utf8CharLength(all.text[at])) {
          got[all.at_offset[at]] = true;
        }
      }
    }
    int count = 0;
    const std::string shown =
        Differences(got, FromRanges(entry["ranges"]), &count);
    ++patterns;
    if (count > 0) {
      ++mismatched_patterns;
      ADD_FAILURE() << pattern << ": " << count
                    << " code points differ from tokenizers: " << shown;
    }
  }
  std::cout << patterns << " patterns checked on " << kScalarValues
            << " code points (" << fixture["unicode_assigned"] << " assigned), "
            << mismatched_patterns << " differ\n";
  EXPECT_GT(patterns, 100);
}

// The lengths in characters of the pieces of `probe`, from pre-tokenized
// pieces that ByteLevel mapped one character per byte.
std::string PieceLengths(const std::string& probe, const Pieces& pieces) {
  std::vector<std::string> lengths;
  size_t byte = 0;
  for (const ByteRange& range : pieces.ranges) {
    const std::string_view piece = pieces.Get(range);
    size_t bytes = 0;
    for (size_t at = 0; at < piece.size(); at += Utf8CharLength(piece[at])) {
      ++bytes;
    }
    size_t chars = 0;
    for (const size_t end = byte + bytes; byte < end;
         byte += Utf8CharLength(probe[byte])) {
      ++chars;
    }
    lengths.push_back(absl::StrCat(chars));
  }
  return absl::StrJoin(lengths, ",");
}

TEST(UnicodeTest, DeepSeekPreTokenizerMatchesTokenizersAroundEveryCodePoint) {
  const std::string dir = std::string(kFixtures) + "deepseek_style/";
  const Json tokenizer = ReadJson(dir + "tokenizer.json");
  absl::StatusOr<std::unique_ptr<PreTokenizer>> pre_tokenizer =
      ParsePreTokenizer(tokenizer["pre_tokenizer"], "pre_tokenizer");
  ASSERT_TRUE(pre_tokenizer.ok()) << pre_tokenizer.status();
  const Json probes = ReadJson(dir + "unicode_probes.json");
  const std::string templ = probes["template"].get<std::string>();
  int checked = 0;
  int mismatched = 0;
  char32_t expected_next = 0;
  Pieces pieces;
  for (const Json& run : probes["runs"]) {
    const char32_t first = run[0].get<uint32_t>();
    const char32_t last = run[1].get<uint32_t>();
    const std::string want = run[2].get<std::string>();
    ASSERT_EQ(first, expected_next) << "runs must cover every code point";
    for (char32_t c = first; c <= last; ++c) {
      if (IsSurrogate(c)) continue;
      std::string character;
      AppendUtf8(c, &character);
      std::string probe;
      for (const char t : templ) {
        if (t == '@') {
          probe += character;
        } else {
          probe.push_back(t);
        }
      }
      pieces.text = probe;
      pieces.ranges.assign(1, {0, probe.size()});
      ASSERT_TRUE((*pre_tokenizer)->PreTokenize(&pieces).ok());
      const std::string got = PieceLengths(probe, pieces);
      ++checked;
      if (got != want && mismatched++ < 10) {
        ADD_FAILURE() << absl::StrFormat("U+%04X", static_cast<uint32_t>(c))
                      << ": pieces of lengths " << got << ", tokenizers "
                      << want;
      }
    }
    expected_next = last + 1;
    if (expected_next == 0xD800) expected_next = 0xE000;
  }
  std::cout << checked << " code points probed, " << mismatched
            << " differ from tokenizers\n";
  EXPECT_EQ(checked, static_cast<int>(kScalarValues));
  EXPECT_EQ(mismatched, 0);
}

}  // namespace
}  // namespace prefopt::tokenizer
