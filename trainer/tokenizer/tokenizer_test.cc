// Tokenizer API behavior: BPE unknown-token and byte-fallback handling (ids
// taken from the Hugging Face `tokenizers` library 0.22.2 on the same JSON),
// errors for unsupported or broken files and inputs, and the accessors.
#include "trainer/tokenizer/tokenizer.h"

#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace prefopt::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Json = nlohmann::json;

constexpr char kFixtures[] = "tests/tokenizer/fixtures/";

// A character-level BPE tokenizer with no other components.
Json TinyTokenizer() {
  return Json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null,
    "decoder": null,
    "model": {
      "type": "BPE", "dropout": null, "unk_token": null,
      "continuing_subword_prefix": null, "end_of_word_suffix": null,
      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
      "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5,
                "<0xC3>": 6, "<0xA9>": 7, "bc": 8},
      "merges": [["a", "b"], ["ab", "c"], ["b", "c"]]
    }
  })");
}

Tokenizer Make(const Json& json) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson(json.dump(), "test.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *std::move(tokenizer);
}

std::vector<int32_t> Ids(const Tokenizer& tokenizer, const std::string& text) {
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, false);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// The error message from loading `json`, which must fail.
std::string LoadError(const Json& json) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson(json.dump(), "bad.json");
  EXPECT_FALSE(tokenizer.ok());
  if (tokenizer.ok()) return "";
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(tokenizer.status().message());
}

TEST(BpeTest, MergesByRankAndDropsUnknownCharactersWithoutUnkToken) {
  const Tokenizer tokenizer = Make(TinyTokenizer());
  EXPECT_THAT(Ids(tokenizer, "abc"), ElementsAre(5));
  EXPECT_THAT(Ids(tokenizer, "aaabcbc"), ElementsAre(1, 1, 5, 8));
  EXPECT_THAT(Ids(tokenizer, "abxyc"), ElementsAre(5));
  EXPECT_THAT(Ids(tokenizer, "a\xF0\x9F\x98\x80\xC3\xA9"), ElementsAre(1));
}

TEST(BpeTest, UnknownToken) {
  Json json = TinyTokenizer();
  json["model"]["unk_token"] = "<unk>";
  const Tokenizer separate = Make(json);
  EXPECT_THAT(Ids(separate, "abxyc"), ElementsAre(4, 0, 0, 3));
  EXPECT_THAT(Ids(separate, "xyab"), ElementsAre(0, 0, 4));
  json["model"]["fuse_unk"] = true;
  const Tokenizer fused = Make(json);
  EXPECT_THAT(Ids(fused, "abxyc"), ElementsAre(4, 0, 3));
  EXPECT_THAT(Ids(fused, "xyab"), ElementsAre(0, 4));
}

TEST(BpeTest, ByteFallbackDoesNotFlushAPendingUnknownToken) {
  Json json = TinyTokenizer();
  json["model"]["unk_token"] = "<unk>";
  json["model"]["fuse_unk"] = true;
  json["model"]["byte_fallback"] = true;
  const Tokenizer tokenizer = Make(json);
  // "é" has <0xC3><0xA9>; the emoji's bytes are missing, so it is <unk>.
  EXPECT_THAT(Ids(tokenizer,
                  "\xC3\xA9"
                  "ab"),
              ElementsAre(6, 7, 4));
  EXPECT_THAT(Ids(tokenizer,
                  "a\xF0\x9F\x98\x80\xC3\xA9\xF0\x9F\x98\x80"
                  "b"),
              ElementsAre(1, 6, 7, 0, 2));
}

TEST(BpeTest, MergesInStringForm) {
  Json json = TinyTokenizer();
  json["model"]["merges"] = {"a b", "ab c", "b c"};
  EXPECT_THAT(Ids(Make(json), "aaabcbc"), ElementsAre(1, 1, 5, 8));
}

TEST(BpeTest, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  Json json = TinyTokenizer();
  json["model"]["vocab"]["ac"] = 9;
  EXPECT_THAT(Ids(Make(json), "ac"), ElementsAre(1, 3));
  json["model"]["ignore_merges"] = true;
  EXPECT_THAT(Ids(Make(json), "ac"), ElementsAre(9));
}

TEST(AddedTokensTest, IdsAreAssignedAsTokenizersAssignsThem) {
  Json json = TinyTokenizer();
  // tokenizers ignores the listed ids: a token in the vocabulary keeps its
  // id, a new one gets the next id after the vocabulary.
  json["added_tokens"] = Json::parse(R"([
    {"id": 50, "content": "<x>", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": true},
    {"id": 3, "content": "c", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": true},
    {"id": 51, "content": "<y>", "single_word": false, "lstrip": false,
     "rstrip": false, "normalized": false, "special": false}])");
  const Tokenizer tokenizer = Make(json);
  EXPECT_EQ(tokenizer.TokenToId("<x>"), 9);
  EXPECT_EQ(tokenizer.TokenToId("<y>"), 10);
  EXPECT_EQ(tokenizer.vocab_size(), 11);
  const std::vector<int32_t> ids = Ids(tokenizer, "ab<x>c<y>abc");
  EXPECT_THAT(ids, ElementsAre(4, 9, 3, 10, 4, 3));
  absl::StatusOr<std::string> skipped = tokenizer.Decode(ids, true);
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(*skipped, "ab <y> ab");
  absl::StatusOr<std::string> all = tokenizer.Decode(ids, false);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, "ab <x> c <y> ab c");
}

TEST(EncodeTest, EmptyText) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromFile(
      std::string(kFixtures) + "llama3_style/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT(Ids(*tokenizer, ""), IsEmpty());
  absl::StatusOr<std::vector<int32_t>> with_bos = tokenizer->Encode("", true);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_THAT(*with_bos, ElementsAre(*tokenizer->bos_id()));
  absl::StatusOr<std::string> decoded = tokenizer->Decode({}, false);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "");
}

TEST(EncodeTest, InvalidUtf8IsAnError) {
  const Tokenizer tokenizer = Make(TinyTokenizer());
  for (const std::string& text :
       {std::string("ab\xFF"), std::string("a\xC3"),
        std::string("\xED\xA0\x80"), std::string("\xC0\xAF"),
        std::string("\xF4\x90\x80\x80")}) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, false);
    ASSERT_FALSE(ids.ok()) << text;
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ids.status().message(), HasSubstr("not valid UTF-8"));
  }
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode("ab\xFF", false);
  EXPECT_THAT(ids.status().message(), HasSubstr("0xFF at offset 2"));
}

TEST(DecodeTest, SkipsUnknownIdsAndRejectsNegativeOnes) {
  const Tokenizer tokenizer = Make(TinyTokenizer());
  // Without a decoder, tokens are joined with spaces, as in tokenizers.
  absl::StatusOr<std::string> text = tokenizer.Decode({5, 1000, 8}, false);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "abc bc");
  absl::StatusOr<std::string> negative = tokenizer.Decode({5, -100}, false);
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.status().message(), HasSubstr("-100 at position 1"));
}

TEST(LoadTest, MissingFileIsNotFound) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromFile("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("/nonexistent/dir/tokenizer.json"));
}

TEST(LoadTest, MalformedJson) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson("{\"model\": {\"type\": \"BPE\",", "broken.json");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("broken.json"));
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("not valid JSON"));
}

TEST(LoadTest, DeeplyNestedJsonIsRefused) {
  const std::string deep = "{\"added_tokens\": " + std::string(100000, '[') +
                           std::string(100000, ']') + "}";
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(deep, "deep.json");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("deep.json:1:273: JSON nested deeper than 256 levels"));
}

TEST(LoadTest, IdsBeyondTheFileSizeAreRefusedBeforeAllocating) {
  // The id-indexed table would need 2^31 entries (tens of GB).
  Json json = TinyTokenizer();
  json["model"]["vocab"]["bc"] = 2147483647;
  EXPECT_THAT(LoadError(json),
              HasSubstr("bad.json: model.vocab.bc: token id 2147483647 is not "
                        "below"));
}

TEST(LoadTest, ManyAddedTokensLoadInLinearTime) {
  // Deduplicating by comparing each token with all earlier ones took minutes
  // here (and any time at all grows with the square of the list).
  Json json = TinyTokenizer();
  constexpr int kTokens = 300000;
  for (int i = 0; i < kTokens; ++i) {
    json["added_tokens"].push_back({{"id", 9 + i},
                                    {"content", "<t" + std::to_string(i) + ">"},
                                    {"special", true}});
  }
  const Tokenizer tokenizer = Make(json);
  EXPECT_EQ(tokenizer.vocab_size(), 9 + kTokens);
}

TEST(TokenizerTest, CheckIdsBelowNamesTheFirstTokenOutside) {
  Json json = TinyTokenizer();
  EXPECT_TRUE(Make(json).CheckIdsBelow(9).ok());
  EXPECT_THAT(std::string(Make(json).CheckIdsBelow(8).message()),
              HasSubstr("vocabulary token \"bc\" has id 8, outside the "
                        "model's vocabulary [0, 8)"));
  json["added_tokens"] =
      Json::parse(R"([{"id": 9, "content": "<eos>", "special": true}])");
  EXPECT_THAT(std::string(Make(json).CheckIdsBelow(9).message()),
              HasSubstr("added token \"<eos>\" has id 9"));
  // Ids a post-processor inserts need not name a token of the file at all.
  json = TinyTokenizer();
  json["post_processor"] = Json::parse(R"({
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [42],
                                           "tokens": ["<s>"]}}})");
  EXPECT_EQ(Make(json).vocab_size(), 9);
  EXPECT_THAT(std::string(Make(json).CheckIdsBelow(9).message()),
              HasSubstr("post_processor special token \"<s>\" has id 42"));
}

TEST(LoadTest, UnsupportedComponentsAreNamedWithTheirPath) {
  Json json = TinyTokenizer();
  json["normalizer"] = {{"type", "BertNormalizer"}};
  EXPECT_THAT(LoadError(json),
              HasSubstr("bad.json: normalizer: normalizer "
                        "type \"BertNormalizer\" is not supported"));

  json = TinyTokenizer();
  json["normalizer"] = {{"type", "Sequence"},
                        {"normalizers", {{{"type", "Lowercase"}}}}};
  EXPECT_THAT(LoadError(json),
              HasSubstr("normalizer.normalizers[0]: normalizer type "
                        "\"Lowercase\" is not supported"));

  json = TinyTokenizer();
  json["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Digits"}, {"individual_digits", true}},
                             {{"type", "Whitespace"}}}}};
  EXPECT_THAT(LoadError(json),
              HasSubstr("pre_tokenizer.pretokenizers[1]: pre_tokenizer type "
                        "\"Whitespace\" is not supported"));

  json = TinyTokenizer();
  json["post_processor"] = {
      {"type", "RobertaProcessing"}, {"sep", {"</s>", 2}}, {"cls", {"<s>", 0}}};
  EXPECT_THAT(LoadError(json), HasSubstr("post_processor: post_processor type "
                                         "\"RobertaProcessing\" is not "
                                         "supported"));

  json = TinyTokenizer();
  json["decoder"] = {
      {"type", "Sequence"},
      {"decoders", {{{"type", "Fuse"}}, {{"type", "WordPiece"}}}}};
  EXPECT_THAT(LoadError(json), HasSubstr("decoder.decoders[1]: decoder type "
                                         "\"WordPiece\" is not supported"));

  json = TinyTokenizer();
  json["model"]["type"] = "Unigram";
  EXPECT_THAT(LoadError(json),
              HasSubstr("model: model type \"Unigram\" is not supported"));
}

TEST(LoadTest, InvalidModelSettings) {
  Json json = TinyTokenizer();
  json["model"]["dropout"] = 0.1;
  EXPECT_THAT(LoadError(json), HasSubstr("model.dropout"));

  json = TinyTokenizer();
  json["model"]["continuing_subword_prefix"] = "##";
  EXPECT_THAT(LoadError(json), HasSubstr("model.continuing_subword_prefix"));

  json = TinyTokenizer();
  json["model"]["merges"].push_back({"c", "x"});
  EXPECT_THAT(LoadError(json),
              HasSubstr("model.merges[3]: merge token \"x\" is not in the "
                        "vocabulary"));

  json = TinyTokenizer();
  json["model"]["merges"] = {"a b c"};
  EXPECT_THAT(LoadError(json), HasSubstr("model.merges[0]"));

  json = TinyTokenizer();
  json["model"]["unk_token"] = "[UNK]";
  EXPECT_THAT(LoadError(json), HasSubstr("model.unk_token"));

  json = TinyTokenizer();
  json["model"]["vocab"]["d"] = -1;
  EXPECT_THAT(LoadError(json), HasSubstr("model.vocab.d"));

  json = TinyTokenizer();
  json["pre_tokenizer"] = {{"type", "Split"},
                           {"pattern", {{"Regex", "(unclosed"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}};
  EXPECT_THAT(LoadError(json), HasSubstr("pre_tokenizer.pattern.Regex"));

  json = TinyTokenizer();
  json["version"] = "2.0";
  EXPECT_THAT(LoadError(json), HasSubstr("version"));

  json = TinyTokenizer();
  json.erase("model");
  EXPECT_THAT(LoadError(json), HasSubstr("model: missing field"));
}

TEST(AccessorTest, VocabularyAndSpecialTokens) {
  absl::StatusOr<Tokenizer> llama3 = Tokenizer::FromFile(
      std::string(kFixtures) + "llama3_style/tokenizer.json");
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  const std::optional<int32_t> bos = llama3->TokenToId("<|begin_of_text|>");
  ASSERT_TRUE(bos.has_value());
  EXPECT_EQ(llama3->bos_id(), bos);
  EXPECT_EQ(llama3->eos_id(), llama3->TokenToId("<|end_of_text|>"));
  EXPECT_TRUE(llama3->IsSpecialToken(*bos));
  EXPECT_EQ(llama3->IdToToken(*bos), "<|begin_of_text|>");
  const std::optional<int32_t> hello = llama3->TokenToId("Hello");
  ASSERT_TRUE(hello.has_value());
  EXPECT_FALSE(llama3->IsSpecialToken(*hello));
  EXPECT_EQ(llama3->IdToToken(*hello), "Hello");
  EXPECT_EQ(llama3->IdToToken(llama3->vocab_size()), std::nullopt);
  EXPECT_EQ(llama3->TokenToId("no such token"), std::nullopt);

  absl::StatusOr<Tokenizer> gpt2 =
      Tokenizer::FromFile(std::string(kFixtures) + "gpt2_style/tokenizer.json");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  // 2000 model tokens, then <|endoftext|> and three other added tokens.
  EXPECT_EQ(gpt2->vocab_size(), 2004);
  EXPECT_EQ(gpt2->bos_id(), std::nullopt);
  EXPECT_EQ(gpt2->eos_id(), gpt2->TokenToId("<|endoftext|>"));

  absl::StatusOr<Tokenizer> llama2 = Tokenizer::FromFile(
      std::string(kFixtures) + "llama2_style/tokenizer.json");
  ASSERT_TRUE(llama2.ok()) << llama2.status();
  EXPECT_EQ(llama2->bos_id(), llama2->TokenToId("<s>"));
  EXPECT_EQ(llama2->eos_id(), llama2->TokenToId("</s>"));
}

TEST(EncodeTest, ConcurrentCallsAgree) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromFile(
      std::string(kFixtures) + "qwen2_style/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 7; ++i) {
    texts.push_back("The quick brown fox's " + std::to_string(12345 * i) +
                    " jumps\n\tover <|im_end|> 日本語 😀 x" +
                    std::string(i, 'y'));
    expected.push_back(Ids(*tokenizer, texts.back()));
  }
  std::vector<int> all_equal(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      bool equal = true;
      for (int i = 0; i < 700; ++i) {
        absl::StatusOr<std::vector<int32_t>> ids =
            tokenizer->Encode(texts[(i + t) % 7], false);
        equal = equal && ids.ok() && *ids == expected[(i + t) % 7];
      }
      all_equal[t] = equal;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(all_equal, ElementsAre(1, 1, 1, 1));
}

}  // namespace
}  // namespace prefopt::tokenizer
