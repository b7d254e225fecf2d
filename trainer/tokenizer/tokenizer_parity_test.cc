// Encode and Decode against what the Hugging Face `tokenizers` library gives
// for every line of tests/tokenizer/corpus.jsonl (and, for the fixtures of
// generate_unicode_metaspace_fixtures.py, corpus_extra.jsonl after it), for
// each fixture tokenizer (see tests/tokenizer/README.md).
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>
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

struct Fixture {
  const char* name;
  bool extra_corpus;  // whether corpus_extra.jsonl follows corpus.jsonl
};

class ParityTest : public testing::TestWithParam<Fixture> {};

TEST_P(ParityTest, MatchesTokenizersOnCorpus) {
  const std::string name = GetParam().name;
  const std::string dir = std::string(kFixtureDir) + "fixtures/" + name + "/";
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromFile(dir + "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<nlohmann::json> corpus =
      ReadJsonl(std::string(kFixtureDir) + "corpus.jsonl");
  if (GetParam().extra_corpus) {
    for (nlohmann::json& line :
         ReadJsonl(std::string(kFixtureDir) + "corpus_extra.jsonl")) {
      corpus.push_back(std::move(line));
    }
  }
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

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ParityTest,
    testing::Values(Fixture{"gpt2_style", false},
                    Fixture{"llama3_style", false},
                    Fixture{"qwen2_style", false},
                    Fixture{"llama2_style", false},
                    Fixture{"deepseek_style", true},
                    Fixture{"metaspace_always_split", true},
                    Fixture{"metaspace_always_nosplit", true},
                    Fixture{"metaspace_never_split", true},
                    Fixture{"metaspace_never_nosplit", true},
                    Fixture{"metaspace_first_split", true},
                    Fixture{"metaspace_first_nosplit", true},
                    // Production tokenizer.json files, unchanged (from the
                    // anthropic and litellm wheels; see
                    // generate_real_tokenizer_fixtures.py).
                    Fixture{"claude", true}, Fixture{"deepseek", true}),
    [](const testing::TestParamInfo<Fixture>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace prefopt::tokenizer
