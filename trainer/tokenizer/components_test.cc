// Single pre-tokenizers, normalizers and decoders against what the Hugging
// Face `tokenizers` library gives (tests/tokenizer/fixtures/
// component_cases.jsonl and metaspace_cases.jsonl), and the rewriting of
// Oniguruma patterns for PCRE2.
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "trainer/tokenizer/decoders.h"
#include "trainer/tokenizer/normalizers.h"
#include "trainer/tokenizer/pre_tokenizers.h"
#include "trainer/tokenizer/regex.h"

namespace prefopt::tokenizer {
namespace {

std::vector<std::string> PreTokenize(const PreTokenizer& pre_tokenizer,
                                     const std::string& text) {
  Pieces pieces;
  pieces.text = text;
  if (!text.empty()) pieces.ranges.emplace_back(0, text.size());
  EXPECT_TRUE(pre_tokenizer.PreTokenize(&pieces).ok());
  std::vector<std::string> out;
  for (const ByteRange& range : pieces.ranges) {
    out.emplace_back(pieces.Get(range));
  }
  return out;
}

class ComponentsTest : public testing::TestWithParam<const char*> {};

TEST_P(ComponentsTest, MatchTokenizersCases) {
  std::ifstream file(std::string("tests/tokenizer/fixtures/") + GetParam());
  ASSERT_TRUE(file.good()) << GetParam();
  std::string line;
  int cases = 0;
  while (std::getline(file, line)) {
    ++cases;
    const Json c = Json::parse(line);
    const std::string kind = c["kind"].get<std::string>();
    SCOPED_TRACE(line);
    if (kind == "pre_tokenizer") {
      absl::StatusOr<std::unique_ptr<PreTokenizer>> pre_tokenizer =
          ParsePreTokenizer(c["config"], "pre_tokenizer");
      ASSERT_TRUE(pre_tokenizer.ok()) << pre_tokenizer.status();
      EXPECT_EQ(PreTokenize(**pre_tokenizer, c["input"].get<std::string>()),
                c["output"].get<std::vector<std::string>>());
    } else if (kind == "normalizer") {
      absl::StatusOr<std::unique_ptr<Normalizer>> normalizer =
          ParseNormalizer(c["config"], "normalizer");
      ASSERT_TRUE(normalizer.ok()) << normalizer.status();
      std::string text = c["input"].get<std::string>();
      ASSERT_TRUE((*normalizer)->Normalize(&text).ok());
      EXPECT_EQ(text, c["output"].get<std::string>());
    } else {
      ASSERT_EQ(kind, "decoder");
      absl::StatusOr<std::unique_ptr<Decoder>> decoder =
          ParseDecoder(c["config"], "decoder");
      ASSERT_TRUE(decoder.ok()) << decoder.status();
      std::vector<std::string> tokens =
          c["input"].get<std::vector<std::string>>();
      ASSERT_TRUE((*decoder)->DecodeChain(&tokens).ok());
      std::string text;
      for (const std::string& token : tokens) text += token;
      EXPECT_EQ(text, c["output"].get<std::string>());
    }
  }
  EXPECT_GT(cases, 50);
}

INSTANTIATE_TEST_SUITE_P(Cases, ComponentsTest,
                         testing::Values("component_cases.jsonl",
                                         "metaspace_cases.jsonl"));

std::vector<std::string> Matches(const Regex& regex, const std::string& text) {
  std::vector<ByteRange> ranges;
  EXPECT_TRUE(regex.FindAll(text, &ranges).ok());
  std::vector<std::string> out;
  for (const auto& [begin, end] : ranges) {
    out.push_back(text.substr(begin, end - begin));
  }
  return out;
}

TEST(RegexTest, WhiteSpaceIsTheUnicodeProperty) {
  absl::StatusOr<Regex> regex = Regex::Compile("\\s+|[^\\s]+");
  ASSERT_TRUE(regex.ok()) << regex.status();
  // U+180E is not white space for Oniguruma (nor Unicode since 6.3).
  EXPECT_EQ(Matches(*regex, "a\xE1\xA0\x8E b\xC2\xA0"),
            (std::vector<std::string>{"a\xE1\xA0\x8E", " ", "b", "\xC2\xA0"}));
}

TEST(RegexTest, LettersIncludeNewerUnicode) {
  // U+1C89 (Unicode 16) is a letter; U+10D40 (Unicode 16) is a digit.
  absl::StatusOr<Regex> regex =
      Regex::Compile("\\p{L}+|\\p{N}+|[^\\p{L}\\p{N}]+");
  ASSERT_TRUE(regex.ok()) << regex.status();
  EXPECT_EQ(Matches(*regex,
                    "a\xE1\xB2\x89"
                    "b\xF0\x90\xB5\x80"
                    "1-"),
            (std::vector<std::string>{"a\xE1\xB2\x89"
                                      "b",
                                      "\xF0\x90\xB5\x80"
                                      "1",
                                      "-"}));
}

TEST(RegexTest, ClassesWithBracketsAndPosixNames) {
  absl::StatusOr<Regex> regex = Regex::Compile("[]\\s[:digit:]]+|[^]a]");
  ASSERT_TRUE(regex.ok()) << regex.status();
  EXPECT_EQ(Matches(*regex, "] 1x]a"),
            (std::vector<std::string>{"] 1", "x", "]"}));
}

TEST(RegexTest, PropertiesOutsideTheTablesAreErrors) {
  for (const char* pattern :
       {"\\p{Braille}", "[[:graph:]]", "\\p{Cn}", "\\p{L", "[[:^alpha:]]"}) {
    absl::StatusOr<Regex> regex = Regex::Compile(pattern);
    ASSERT_FALSE(regex.ok()) << pattern;
    EXPECT_NE(regex.status().message().find(pattern), absl::string_view::npos)
        << regex.status();
  }
  absl::StatusOr<Regex> regex = Regex::Compile("\\p{Braille}");
  EXPECT_NE(regex.status().message().find("supported: l, lu"),
            absl::string_view::npos)
      << regex.status();
}

TEST(RegexTest, ClassesPcre2CannotWriteAreErrors) {
  // PCRE2 puts U+1171E in Mn, Unicode 16 in Mc; a bracket class cannot
  // subtract it. Outside brackets it can.
  absl::StatusOr<Regex> mn_in_class = Regex::Compile("[a\\p{Mn}]");
  ASSERT_FALSE(mn_in_class.ok());
  EXPECT_NE(mn_in_class.status().message().find("\\p{Mn} inside a bracket"),
            absl::string_view::npos)
      << mn_in_class.status();
  absl::StatusOr<Regex> mn = Regex::Compile("\\p{Mn}");
  ASSERT_TRUE(mn.ok()) << mn.status();
  EXPECT_FALSE(mn->FullMatch("\xF0\x91\x9C\x9E"));  // U+1171E
  EXPECT_TRUE(mn->FullMatch("\xCC\x81"));           // U+0301
  // The complement of a property whose tables differ, inside brackets.
  absl::StatusOr<Regex> not_letter = Regex::Compile("[\\P{L}\\d]");
  ASSERT_FALSE(not_letter.ok());
  EXPECT_NE(not_letter.status().message().find("complement \\P{L}"),
            absl::string_view::npos)
      << not_letter.status();
}

TEST(MetaspaceTest, SettingsTokenizersRefusesAreErrors) {
  const struct {
    const char* json;
    const char* error;
  } cases[] = {
      {R"({"type": "Metaspace", "replacement": "_", "add_prefix_space": false})",
       "pre_tokenizer.add_prefix_space: false needs prepend_scheme"},
      {R"({"type": "Metaspace", "replacement": "_", "prepend_scheme": "all"})",
       "pre_tokenizer.prepend_scheme: unknown prepend_scheme \"all\""},
      {R"({"type": "Metaspace", "replacement": "ab"})",
       "pre_tokenizer.replacement: expected one character"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::unique_ptr<PreTokenizer>> pre_tokenizer =
        ParsePreTokenizer(Json::parse(c.json), "pre_tokenizer");
    ASSERT_FALSE(pre_tokenizer.ok()) << c.json;
    EXPECT_NE(pre_tokenizer.status().message().find(c.error),
              absl::string_view::npos)
        << pre_tokenizer.status();
  }
}

TEST(RegexTest, EmptyMatchesAdvance) {
  absl::StatusOr<Regex> regex = Regex::Compile("x*");
  ASSERT_TRUE(regex.ok());
  // As the onig crate: an empty match right after a match is skipped.
  EXPECT_EQ(Matches(*regex, "axxb"), (std::vector<std::string>{"", "xx", ""}));
}

TEST(RegexTest, BadPatternIsAnError) {
  absl::StatusOr<Regex> regex = Regex::Compile("(unclosed");
  ASSERT_FALSE(regex.ok());
  EXPECT_NE(regex.status().message().find("(unclosed"), absl::string_view::npos)
      << regex.status();
}

}  // namespace
}  // namespace prefopt::tokenizer
