// Encode and Decode against what the Hugging Face `tokenizers` library gives
// for every line of tests/tokenizer/corpus.jsonl, for each fixture tokenizer
// (see tests/tokenizer/README.md).
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "trainer/tokenizer/tokenizer.h"

namespace prefopt::tokenizer {
namespace {

constexpr char kFixtureDir[] = "tests/tokenizer/";

std::vector<nlohmann::json> ReadJsonl(const std::string& path) {
  std::ifstream file(path);
  EXPECT_TRUE(file.good()) << "cannot open " << path;
  std::vector<nlohmann::json> lines;
  std::string line;
  while (std::getline(file, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

std::string Show(const std::vector<int32_t>& ids) {
  return "[" + absl::StrJoin(ids, ",") + "]";
}

class ParityTest : public testing::TestWithParam<const char*> {};

TEST_P(ParityTest, MatchesTokenizersOnCorpus) {
  const std::string name = GetParam();
  const std::string dir = std::string(kFixtureDir) + "fixtures/" + name + "/";
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromFile(dir + "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::vector<nlohmann::json> corpus =
      ReadJsonl(std::string(kFixtureDir) + "corpus.jsonl");
  const std::vector<nlohmann::json> expected =
      ReadJsonl(dir + "expected.jsonl");
  ASSERT_EQ(corpus.size(), expected.size());
  ASSERT_GT(corpus.size(), 200u);

  int matched = 0;
  int reported = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string text = corpus[i].get<std::string>();
    const nlohmann::json& want = expected[i];
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text, false);
    absl::StatusOr<std::vector<int32_t>> ids_special =
        tokenizer->Encode(text, true);
    ASSERT_TRUE(ids.ok() && ids_special.ok()) << "line " << i + 1;
    const auto want_ids = want["ids"].get<std::vector<int32_t>>();
    const auto want_special = want["ids_special"].get<std::vector<int32_t>>();
    // Decode what tokenizers produced, so a decode check does not depend on
    // the encode check.
    absl::StatusOr<std::string> decoded =
        tokenizer->Decode(want_special, false);
    absl::StatusOr<std::string> decoded_skip =
        tokenizer->Decode(want_special, true);
    ASSERT_TRUE(decoded.ok() && decoded_skip.ok()) << "line " << i + 1;
    const bool ok = *ids == want_ids && *ids_special == want_special &&
                    *decoded == want["decoded"].get<std::string>() &&
                    *decoded_skip == want["decoded_skip"].get<std::string>();
    if (ok) {
      ++matched;
    } else if (reported++ < 5) {
      ADD_FAILURE() << name << " corpus line " << i + 1 << ": "
                    << nlohmann::json(text).dump() << "\n ids         "
                    << Show(*ids) << "\n want        " << Show(want_ids)
                    << "\n ids_special " << Show(*ids_special)
                    << "\n want        " << Show(want_special)
                    << "\n decoded     " << nlohmann::json(*decoded).dump()
                    << "\n want        " << want["decoded"].dump()
                    << "\n skip        " << nlohmann::json(*decoded_skip).dump()
                    << "\n want        " << want["decoded_skip"].dump();
    }
  }
  std::cout << name << ": " << matched << "/" << corpus.size()
            << " corpus lines match tokenizers\n";
  EXPECT_EQ(matched, static_cast<int>(corpus.size()));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParityTest,
                         testing::Values("gpt2_style", "llama3_style",
                                         "qwen2_style", "llama2_style"),
                         [](const testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
}  // namespace prefopt::tokenizer
