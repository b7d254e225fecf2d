// LoadDataset end to end on tests/fixtures/text_model: the ids of text and
// conversational data equal what TRL's own DPOTrainer / SFTTrainer data
// preparation gives (recorded by generate_text_model.py); the token cache is
// used, rebuilt when stale or damaged; and every kind of bad input is
// reported with its file, line and field.
#include "trainer/data/dataset_loader.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "trainer/data/token_cache.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/util/crc32c.h"

namespace prefopt::data {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kFixture[] = "tests/fixtures/text_model/";
constexpr int kVocab = 391;

std::string Fixture(const std::string& name) { return kFixture + name; }

std::string TempDir(const std::string& name) {
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  fs::create_directories(dir);
  return dir;
}

std::string Write(const std::string& dir, const std::string& name,
                  const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

const nlohmann::json& Expected() {
  static const nlohmann::json* const expected = [] {
    std::ifstream in(Fixture("expected.json"));
    return new nlohmann::json(nlohmann::json::parse(in));
  }();
  return *expected;
}

DataOptions Options(DataConfig::ChatTemplate chat, const std::string& cache) {
  DataOptions o;
  o.vocab_size = kVocab;
  o.truncation.max_length = 1024;
  o.tokenizer_path = Fixture("tokenizer.json");
  o.chat_template = chat;
  o.cache_dir = cache;
  return o;
}

std::vector<int32_t> Ids(const nlohmann::json& row, const char* field) {
  return row[field].get<std::vector<int32_t>>();
}

absl::StatusOr<Dataset> Load(const std::string& file, ExampleKind kind,
                             const DataOptions& options,
                             std::string* log_text = nullptr) {
  std::ostringstream log;
  absl::StatusOr<Dataset> ds = LoadDataset({file}, kind, options, &log);
  if (log_text != nullptr) *log_text = log.str();
  return ds;
}

TEST(TextModelFixture, TokenizerMatchesTheModelVocabulary) {
  std::ifstream config_file(Fixture("config.json"));
  const nlohmann::json config = nlohmann::json::parse(config_file);
  absl::StatusOr<tokenizer::Tokenizer> tok =
      tokenizer::Tokenizer::FromFile(Fixture("tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(config["vocab_size"].get<int>(), kVocab);
  EXPECT_EQ(tok->vocab_size(), kVocab);
  EXPECT_EQ(DefaultTokenizerPath("", kFixture),
            (fs::path(kFixture) / "tokenizer.json").string());
  EXPECT_EQ(DefaultTokenizerPath("/my/tokenizer.json", kFixture),
            "/my/tokenizer.json");
  EXPECT_EQ(DefaultTokenizerPath("", TempDir("no_tokenizer")), "");
  EXPECT_EQ(DefaultTokenizerPath("", ""), "");
}

TEST(LoadDatasetTest, TextPairsMatchTrlDpo) {
  absl::StatusOr<Dataset> ds =
      Load(Fixture("pref.jsonl"), ExampleKind::kPreference,
           Options(DataConfig::NONE, TempDir("cache_pref")));
  ASSERT_TRUE(ds.ok()) << ds.status();
  const nlohmann::json& want = Expected()["pref"];
  ASSERT_EQ(ds->examples.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    const Example& ex = ds->examples[i];
    EXPECT_EQ(ex.prompt, Ids(want[i], "prompt_ids"));
    EXPECT_EQ(ex.chosen, Ids(want[i], "chosen_ids"));
    EXPECT_EQ(ex.rejected, Ids(want[i], "rejected_ids"));
    EXPECT_TRUE(ex.context.empty());
    EXPECT_EQ(ex.source, Fixture("pref.jsonl:") + std::to_string(i + 1));
  }
  EXPECT_EQ(ds->examples[1].preference_fraction, 0.75f);
  EXPECT_LT(ds->examples[0].preference_fraction, 0.0f);
  EXPECT_EQ(ds->identical_responses, 1);  // row 5: a warning, not an error
}

TEST(LoadDatasetTest, TextUnpairedTokenizeAsDemonstrationsWithKlCompletions) {
  // KTOTrainer's _prepare_dataset tokenizes {"prompt", "completion"} as
  // SFTTrainer does (docs/architecture.md "Following TRL 1.x"): the same
  // lines with a label give the same ids.
  const std::string dir = TempDir("cache_unpaired");
  std::ifstream in(Fixture("sft.jsonl"));
  std::string line, text;
  for (int i = 0; std::getline(in, line); ++i) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("context")) continue;
    j["label"] = i % 2 == 0;
    text += j.dump() + "\n";
  }
  const std::string file = Write(dir, "unpaired.jsonl", text);
  DataOptions options = Options(DataConfig::NONE, dir);
  options.kl_chunk = 2;
  absl::StatusOr<Dataset> demos =
      Load(file, ExampleKind::kDemonstration, options);
  // A line with a label is not a demonstration.
  ASSERT_FALSE(demos.ok());
  for (int pass = 0; pass < 2; ++pass) {  // tokenized, then from the cache
    SCOPED_TRACE(pass);
    std::string log;
    absl::StatusOr<Dataset> ds =
        Load(file, ExampleKind::kUnpaired, options, &log);
    ASSERT_TRUE(ds.ok()) << ds.status();
    EXPECT_THAT(log,
                HasSubstr(pass == 0 ? "tokenized" : "from the token cache"));
    const nlohmann::json& want = Expected()["sft"];
    size_t w = 0;
    for (size_t i = 0; i < ds->examples.size(); ++i, ++w) {
      while (want[w].contains("context_ids")) ++w;
      const Example& ex = ds->examples[i];
      EXPECT_EQ(ex.prompt, Ids(want[w], "prompt_ids")) << i;
      EXPECT_EQ(ex.chosen, Ids(want[w], "completion_ids")) << i;
      // Runs of 2: each takes the other's completion.
      const size_t other =
          i % 2 == 0 ? std::min(i + 1, ds->examples.size() - 1) : i - 1;
      EXPECT_EQ(ex.rejected, ds->examples[other].chosen) << i;
    }
    ASSERT_GE(ds->examples.size(), 2u);
    EXPECT_NE(ds->examples[0].label, ds->examples[1].label);
  }
}

TEST(LoadDatasetTest, TextDemonstrationsMatchTrlSft) {
  absl::StatusOr<Dataset> ds =
      Load(Fixture("sft.jsonl"), ExampleKind::kDemonstration,
           Options(DataConfig::NONE, TempDir("cache_sft")));
  ASSERT_TRUE(ds.ok()) << ds.status();
  const nlohmann::json& want = Expected()["sft"];
  ASSERT_EQ(ds->examples.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(ds->examples[i].prompt, Ids(want[i], "prompt_ids"));
    EXPECT_EQ(ds->examples[i].chosen, Ids(want[i], "completion_ids"));
    EXPECT_TRUE(ds->examples[i].rejected.empty());
  }
}

TEST(LoadDatasetTest, ConversationsMatchTrlWithBothTemplates) {
  for (const auto& [name, chat] : {std::pair{"CHATML", DataConfig::CHATML},
                                   std::pair{"LLAMA3", DataConfig::LLAMA3}}) {
    SCOPED_TRACE(name);
    const DataOptions options =
        Options(chat, TempDir(std::string("cache_chat_") + name));
    absl::StatusOr<Dataset> pairs =
        Load(Fixture("pref_chat.jsonl"), ExampleKind::kPreference, options);
    ASSERT_TRUE(pairs.ok()) << pairs.status();
    const nlohmann::json& want = Expected()["pref_chat"][name];
    ASSERT_EQ(pairs->examples.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(pairs->examples[i].prompt, Ids(want[i], "prompt_ids"));
      EXPECT_EQ(pairs->examples[i].chosen, Ids(want[i], "chosen_ids"));
      EXPECT_EQ(pairs->examples[i].rejected, Ids(want[i], "rejected_ids"));
    }
    absl::StatusOr<Dataset> demos =
        Load(Fixture("sft_chat.jsonl"), ExampleKind::kDemonstration, options);
    ASSERT_TRUE(demos.ok()) << demos.status();
    const nlohmann::json& want_demos = Expected()["sft_chat"][name];
    ASSERT_EQ(demos->examples.size(), want_demos.size());
    for (size_t i = 0; i < want_demos.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(demos->examples[i].prompt, Ids(want_demos[i], "prompt_ids"));
      EXPECT_EQ(demos->examples[i].chosen,
                Ids(want_demos[i], "completion_ids"));
    }
  }
}

TEST(LoadDatasetTest, ConversationalUnpairedTokenizeAsSftConversations) {
  // sft_chat.jsonl's conversations with a label: KTO's _prepare_dataset
  // renders and splits them as SFT's does (expected.json's sft_chat).
  std::ifstream in(Fixture("sft_chat.jsonl"));
  std::string line, text;
  for (int i = 0; std::getline(in, line); ++i) {
    nlohmann::json j = nlohmann::json::parse(line);
    j["label"] = i % 2 == 1;
    text += j.dump() + "\n";
  }
  for (const auto& [name, chat] : {std::pair{"CHATML", DataConfig::CHATML},
                                   std::pair{"LLAMA3", DataConfig::LLAMA3}}) {
    SCOPED_TRACE(name);
    const std::string dir = TempDir(std::string("cache_unpaired_chat_") + name);
    const std::string file = Write(dir, "unpaired_chat.jsonl", text);
    absl::StatusOr<Dataset> ds =
        Load(file, ExampleKind::kUnpaired, Options(chat, dir));
    ASSERT_TRUE(ds.ok()) << ds.status();
    const nlohmann::json& want = Expected()["sft_chat"][name];
    ASSERT_EQ(ds->examples.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(ds->examples[i].prompt, Ids(want[i], "prompt_ids"));
      EXPECT_EQ(ds->examples[i].chosen, Ids(want[i], "completion_ids"));
      EXPECT_EQ(ds->examples[i].label, i % 2 == 1);
      // kl_chunk 0: no KL completions (APO-zero).
      EXPECT_TRUE(ds->examples[i].rejected.empty());
    }
  }
}

// The policy's sequence, [context ++] prompt ++ completion, and PRIOR's
// reference sequence, prompt ++ completion, as BuildBatch lays them out.
std::vector<int32_t> Sequence(const Example& ex, bool with_context) {
  std::vector<int32_t> seq;
  if (with_context) seq = ex.context;
  seq.insert(seq.end(), ex.prompt.begin(), ex.prompt.end());
  seq.insert(seq.end(), ex.chosen.begin(), ex.chosen.end());
  return seq;
}

TEST(LoadDatasetTest, PriorCompletionIsTheSameForPolicyAndReference) {
  absl::StatusOr<Dataset> ds =
      Load(Fixture("prior.jsonl"), ExampleKind::kDemonstration,
           Options(DataConfig::NONE, TempDir("cache_prior")));
  ASSERT_TRUE(ds.ok()) << ds.status();
  const nlohmann::json& want = Expected()["prior"];
  ASSERT_EQ(ds->examples.size(), want.size());
  absl::StatusOr<tokenizer::Tokenizer> tok =
      tokenizer::Tokenizer::FromFile(Fixture("tokenizer.json"));
  ASSERT_TRUE(tok.ok());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    const Example& ex = ds->examples[i];
    EXPECT_EQ(ex.context, Ids(want[i], "context_ids"));
    EXPECT_EQ(ex.prompt, Ids(want[i], "prompt_ids"));
    EXPECT_EQ(ex.chosen, Ids(want[i], "completion_ids"));
    // The BOS starts the policy's sequence.
    EXPECT_EQ(ex.context.front(), *tok->bos_id());
    const std::vector<int32_t> policy = Sequence(ex, true);
    const std::vector<int32_t> reference = Sequence(ex, false);
    ASSERT_GE(reference.size(), ex.chosen.size());
    EXPECT_TRUE(
        std::equal(ex.chosen.rbegin(), ex.chosen.rend(), policy.rbegin()));
    EXPECT_TRUE(
        std::equal(ex.chosen.rbegin(), ex.chosen.rend(), reference.rbegin()));
  }
  // A token across the prompt/completion boundary (" brown" from "bro" +
  // "wn") goes to the completion, as TRL's SFT split puts it; the policy's
  // sequence is the context, then exactly TRL's prompt + completion.
  const std::string dir = TempDir("prior_boundary");
  const std::string file =
      Write(dir, "p.jsonl",
            "{\"context\": \"ctx\", \"prompt\": \"the quick bro\", "
            "\"completion\": \"wn fox\"}\n");
  ds = Load(file, ExampleKind::kDemonstration, Options(DataConfig::NONE, dir));
  ASSERT_TRUE(ds.ok()) << ds.status();
  const Example& ex = ds->examples[0];
  std::vector<int32_t> context = {*tok->bos_id()};
  const std::vector<int32_t> ctx = *tok->Encode("ctx", false);
  context.insert(context.end(), ctx.begin(), ctx.end());
  EXPECT_EQ(ex.context, context);
  std::vector<int32_t> joint = {*tok->bos_id()};
  joint.insert(joint.end(), ex.prompt.begin(), ex.prompt.end());
  joint.insert(joint.end(), ex.chosen.begin(), ex.chosen.end());
  EXPECT_EQ(joint, *tok->Encode("the quick brown fox<|endoftext|>", true));
  EXPECT_NE(ex.prompt, *tok->Encode("the quick bro", false));
}

TEST(LoadDatasetTest, ConversationalPriorMovesTheBosToTheContext) {
  const std::string dir = TempDir("prior_chat");
  const std::string file = Write(
      dir, "p.jsonl",
      "{\"context\": \"Doc: sky is blue.\", \"prompt\": [{\"role\": \"user\", "
      "\"content\": \"Color?\"}], \"completion\": [{\"role\": \"assistant\", "
      "\"content\": \"Blue.\"}]}\n");
  absl::StatusOr<Dataset> ds =
      Load(file, ExampleKind::kDemonstration, Options(DataConfig::LLAMA3, dir));
  ASSERT_TRUE(ds.ok()) << ds.status();
  absl::StatusOr<tokenizer::Tokenizer> tok =
      tokenizer::Tokenizer::FromFile(Fixture("tokenizer.json"));
  const Example& ex = ds->examples[0];
  std::vector<int32_t> context = {*tok->TokenToId("<|begin_of_text|>")};
  const std::vector<int32_t> doc = *tok->Encode("Doc: sky is blue.", false);
  context.insert(context.end(), doc.begin(), doc.end());
  EXPECT_EQ(ex.context, context);
  EXPECT_EQ(ex.prompt.front(), *tok->TokenToId("<|start_header_id|>"));
}

TEST(LoadDatasetTest, TruncationDropsAndCounts) {
  DataOptions options = Options(DataConfig::NONE, TempDir("cache_trunc"));
  options.truncation.max_length = 12;
  options.truncation.max_prompt_length = 4;
  absl::StatusOr<Dataset> ds =
      Load(Fixture("pref.jsonl"), ExampleKind::kPreference, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const nlohmann::json& want = Expected()["pref"];
  EXPECT_GT(ds->truncated, 0);
  for (const Example& ex : ds->examples) {
    EXPECT_LE(ex.prompt.size(), 4u);
    EXPECT_LE(ex.prompt.size() + ex.chosen.size(), 12u);
  }
  // KEEP_END keeps the prompt's last tokens, and responses keep their start.
  const std::vector<int32_t> prompt = Ids(want[0], "prompt_ids");
  EXPECT_EQ(ds->examples[0].prompt,
            std::vector<int32_t>(prompt.end() - 4, prompt.end()));
  options.truncation.max_length = 4;
  options.truncation.max_prompt_length = 0;
  ds = Load(Fixture("pref.jsonl"), ExampleKind::kPreference, options);
  ASSERT_FALSE(ds.ok());
  EXPECT_THAT(ds.status().message(), HasSubstr("8 dropped"));
}

TEST(LoadDatasetTest, SecondLoadUsesTheCacheAndStaleOrDamagedOnesAreRebuilt) {
  const std::string dir = TempDir("cache_cycle");
  const std::string cache_dir = dir + "/cache";
  std::ifstream src(Fixture("pref.jsonl"));
  const std::string text((std::istreambuf_iterator<char>(src)), {});
  const std::string file = Write(dir, "pref.jsonl", text);
  const DataOptions options = Options(DataConfig::NONE, cache_dir);
  std::string log;
  absl::StatusOr<Dataset> first =
      Load(file, ExampleKind::kPreference, options, &log);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(log, HasSubstr("tokenized 8 examples"));
  EXPECT_THAT(log, HasSubstr("token cache written to"));
  const std::string cache = TokenCachePath(file, cache_dir);
  ASSERT_TRUE(fs::exists(cache)) << cache;

  absl::StatusOr<Dataset> second =
      Load(file, ExampleKind::kPreference, options, &log);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(log, HasSubstr("8 examples from the token cache"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("tokenized")));
  ASSERT_EQ(second->examples.size(), first->examples.size());
  for (size_t i = 0; i < first->examples.size(); ++i) {
    EXPECT_EQ(second->examples[i].prompt, first->examples[i].prompt);
    EXPECT_EQ(second->examples[i].chosen, first->examples[i].chosen);
    EXPECT_EQ(second->examples[i].rejected, first->examples[i].rejected);
    EXPECT_EQ(second->examples[i].source, first->examples[i].source);
    EXPECT_EQ(second->examples[i].preference_fraction,
              first->examples[i].preference_fraction);
  }
  EXPECT_EQ(second->identical_responses, first->identical_responses);

  // A damaged cache (cut short): a notice, then tokenized again.
  fs::resize_file(cache, fs::file_size(cache) / 2);
  ASSERT_TRUE(Load(file, ExampleKind::kPreference, options, &log).ok());
  EXPECT_THAT(log, HasSubstr("damaged token cache"));
  ASSERT_TRUE(Load(file, ExampleKind::kPreference, options, &log).ok());
  EXPECT_THAT(log, HasSubstr("from the token cache"));

  // A forged cache, whole by its checksum but holding an id outside the
  // vocabulary: refused with the reason, then tokenized again.
  {
    std::ifstream in(cache, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    in.close();
    // The first id follows the 56-byte header and the first example's
    // 32-byte record (token_cache.h).
    const int32_t forged = 1 << 30;
    std::memcpy(&bytes[88], &forged, sizeof(forged));
    const uint32_t crc = util::Crc32c(bytes.data(), bytes.size() - 4);
    std::memcpy(&bytes[bytes.size() - 4], &crc, sizeof(crc));
    std::ofstream(cache, std::ios::binary | std::ios::trunc) << bytes;
  }
  absl::StatusOr<Dataset> unforged =
      Load(file, ExampleKind::kPreference, options, &log);
  ASSERT_TRUE(unforged.ok()) << unforged.status();
  EXPECT_THAT(log, HasSubstr("invalid token cache " + cache + ": " + file +
                             ":1 has id 1073741824, outside the vocabulary"));
  EXPECT_THAT(log, HasSubstr("tokenizing again"));
  EXPECT_EQ(unforged->examples[0].prompt, first->examples[0].prompt);

  // Other truncation settings: stale.
  DataOptions shorter = options;
  shorter.truncation.max_length = 512;
  ASSERT_TRUE(Load(file, ExampleKind::kPreference, shorter, &log).ok());
  EXPECT_THAT(log, HasSubstr("stale token cache"));
  EXPECT_THAT(log, HasSubstr("tokenizing again"));

  // The data changed: stale, and the new line is read.
  Write(dir, "pref.jsonl",
        text + "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n");
  absl::StatusOr<Dataset> third =
      Load(file, ExampleKind::kPreference, options, &log);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_THAT(log, HasSubstr("stale token cache"));
  EXPECT_EQ(third->examples.size(), 9u);

  // A cache that cannot be written is not an error.
  const std::string blocked = Write(dir, "not_a_folder", "x");
  ASSERT_TRUE(Load(file, ExampleKind::kPreference,
                   Options(DataConfig::NONE, blocked + "/cache"), &log)
                  .ok());
  EXPECT_THAT(log, HasSubstr("cannot write the token cache"));

  // Without a cache dir the cache goes next to the data.
  ASSERT_TRUE(
      Load(file, ExampleKind::kPreference, Options(DataConfig::NONE, ""), &log)
          .ok());
  EXPECT_TRUE(fs::exists(file + ".tokcache"));
}

TEST(LoadDatasetTest, PreTokenizedFilesNeedNoTokenizerButTextDoes) {
  const std::string dir = TempDir("ids");
  const std::string ids = Write(
      dir, "ids.jsonl",
      "{\"prompt_ids\": [1, 2], \"chosen_ids\": [3], \"rejected_ids\": [4]}\n");
  DataOptions options = Options(DataConfig::NONE, dir);
  options.tokenizer_path.clear();
  absl::StatusOr<Dataset> ds = Load(ids, ExampleKind::kPreference, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->examples[0].prompt, (std::vector<int32_t>{1, 2}));
  EXPECT_FALSE(fs::exists(TokenCachePath(ids, dir)));

  // Several files, in order, of different formats.
  ds = LoadDataset({ids, Fixture("pref.jsonl"), ids}, ExampleKind::kPreference,
                   Options(DataConfig::NONE, dir), nullptr);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->examples.size(), 10u);
  EXPECT_EQ(ds->examples[9].source, ids + ":1");

  ds = Load(Fixture("pref.jsonl"), ExampleKind::kPreference, options);
  ASSERT_FALSE(ds.ok());
  EXPECT_THAT(ds.status().message(),
              HasSubstr("pref.jsonl:1: text data needs a tokenizer: set "
                        "data.tokenizer_path"));
}

TEST(LoadDatasetTest, TokenizerMustFitTheModelAndTheTemplate) {
  DataOptions options = Options(DataConfig::NONE, TempDir("fit"));
  options.vocab_size = 300;
  absl::StatusOr<Dataset> ds =
      Load(Fixture("pref.jsonl"), ExampleKind::kPreference, options);
  ASSERT_FALSE(ds.ok());
  EXPECT_THAT(
      ds.status().message(),
      HasSubstr("tokenizer.json: vocabulary token \"Ġquick\" has id 383, "
                "outside the model's vocabulary [0, 300)"));

  // The post-processor's ids count too: with the BOS it inserts moved beyond
  // the vocabulary every example would index past the embedding.
  {
    std::ifstream in(Fixture("tokenizer.json"));
    nlohmann::json tok = nlohmann::json::parse(in);
    for (nlohmann::json& processor : tok["post_processor"]["processors"]) {
      if (processor["type"] == "TemplateProcessing") {
        processor["special_tokens"]["<|begin_of_text|>"]["ids"] = {391};
      }
    }
    const std::string dir = TempDir("post_processor_id");
    Write(dir, "tokenizer.json", tok.dump());
    options = Options(DataConfig::NONE, dir);
    options.tokenizer_path = dir;
    ds = Load(Fixture("pref.jsonl"), ExampleKind::kPreference, options);
    ASSERT_FALSE(ds.ok());
    EXPECT_THAT(ds.status().message(),
                HasSubstr("post_processor special token "
                          "\"<|begin_of_text|>\" has id 391, outside the "
                          "model's vocabulary [0, 391)"));
  }

  // A tokenizer without ChatML's special tokens cannot take CHATML.
  std::ifstream in(Fixture("tokenizer.json"));
  nlohmann::json tok = nlohmann::json::parse(in);
  nlohmann::json& added = tok["added_tokens"];
  for (size_t i = 0; i < added.size(); ++i) {
    if (added[i]["content"] == "<|im_start|>") added[i]["special"] = false;
  }
  const std::string dir = TempDir("no_chatml");
  Write(dir, "tokenizer.json", tok.dump());
  options = Options(DataConfig::CHATML, dir);
  options.tokenizer_path = dir;  // a folder holding tokenizer.json
  ds = Load(Fixture("pref_chat.jsonl"), ExampleKind::kPreference, options);
  ASSERT_FALSE(ds.ok());
  EXPECT_THAT(ds.status().message(),
              HasSubstr("data.chat_template: CHATML writes the token "
                        "\"<|im_start|>\""));
}

TEST(LoadDatasetTest, MissingFileIsNamed) {
  absl::StatusOr<Dataset> ds =
      Load("/no/such/file.jsonl", ExampleKind::kPreference,
           Options(DataConfig::NONE, TempDir("missing")));
  ASSERT_FALSE(ds.ok());
  EXPECT_TRUE(absl::IsNotFound(ds.status()));
  EXPECT_THAT(ds.status().message(),
              HasSubstr("/no/such/file.jsonl: cannot open data file"));
}

struct BadCase {
  const char* name;
  ExampleKind kind;
  DataConfig::ChatTemplate chat;
  std::string text;
  const char* where;  // ":line: ..." after the file name
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

constexpr char kPair[] =
    "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n";
constexpr char kChatPair[] =
    "{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], \"chosen\": "
    "[{\"role\": \"assistant\", \"content\": \"b\"}], \"rejected\": "
    "[{\"role\": \"assistant\", \"content\": \"c\"}]}\n";

class LoadDatasetBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(LoadDatasetBadInput, NamesFileLineAndField) {
  const BadCase& c = GetParam();
  const std::string dir = TempDir(std::string("bad_") + c.name);
  const std::string file = Write(dir, "data.jsonl", c.text);
  absl::StatusOr<Dataset> ds = Load(file, c.kind, Options(c.chat, dir));
  ASSERT_FALSE(ds.ok()) << c.name;
  EXPECT_THAT(std::string(ds.status().message()), HasSubstr(file + c.where));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LoadDatasetBadInput,
    ::testing::Values(
        BadCase{"malformed_json", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": \"b\"\n",
                ":1: malformed JSON at byte"},
        BadCase{"number_overflow", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": "
                "\"c\", \"x\": 1e400}\n",
                ":1: invalid JSON"},
        BadCase{"deep_chat_message", ExampleKind::kPreference,
                DataConfig::CHATML,
                "{\"prompt\": [{\"role\": \"user\", \"content\": " +
                    std::string(5000, '[') + std::string(5000, ']') +
                    "}], \"chosen\": [], \"rejected\": []}\n",
                ":1:column 294: JSON nested deeper than 256 levels"},
        BadCase{"missing_field", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": \"b\"}\n",
                ":1: missing field \"rejected\""},
        BadCase{"missing_prompt", ExampleKind::kPreference, DataConfig::NONE,
                "{\"chosen\": \"b\", \"rejected\": \"c\"}\n",
                ":1: missing field \"prompt\""},
        BadCase{"mistyped_field", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": 3, \"rejected\": \"c\"}\n",
                ":1: field \"chosen\" must be a string, got the number 3"},
        BadCase{"mistyped_prompt", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": {}, \"chosen\": \"b\", \"rejected\": \"c\"}\n",
                ":1: field \"prompt\" must be a string (text data) or a list "
                "of messages"},
        BadCase{"invalid_utf8", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": \"b\xff\", \"rejected\": "
                "\"c\"}\n",
                ":1: field \"chosen\" is not valid UTF-8"},
        BadCase{"invalid_utf8_in_a_message", ExampleKind::kPreference,
                DataConfig::CHATML,
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"ok\"}, "
                "{\"role\": \"user\", \"content\": \"\xc3(\"}], \"chosen\": "
                "[], \"rejected\": []}\n",
                ":1: field \"prompt[1].content\" is not valid UTF-8"},
        BadCase{"lone_surrogate", ExampleKind::kDemonstration, DataConfig::NONE,
                "{\"prompt\": \"a\\ud800\", \"completion\": \"b\"}\n",
                ":1: field \"prompt\" is not valid UTF-8"},
        BadCase{"empty_prompt", ExampleKind::kPreference, DataConfig::NONE,
                "{\"prompt\": \"\", \"chosen\": \"b\", \"rejected\": \"c\"}\n",
                ":1: field \"prompt\" is empty"},
        BadCase{"empty_response", ExampleKind::kDemonstration, DataConfig::NONE,
                "{\"prompt\": \"a\", \"completion\": \"b\"}\n"
                "{\"prompt\": \"a\", \"completion\": \"\"}\n",
                ":2: field \"completion\" is empty"},
        BadCase{"empty_context", ExampleKind::kDemonstration, DataConfig::NONE,
                "{\"context\": \"\", \"prompt\": \"a\", \"completion\": "
                "\"b\"}\n",
                ":1: field \"context\" is empty"},
        BadCase{"label_not_a_boolean", ExampleKind::kUnpaired, DataConfig::NONE,
                "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": "
                "\"yes\"}\n",
                ":1: field \"label\" must be true or false, got \"yes\""},
        BadCase{"label_not_a_boolean_ids", ExampleKind::kUnpaired,
                DataConfig::NONE,
                "{\"prompt_ids\": [1], \"completion_ids\": [2], \"label\": "
                "1}\n",
                ":1: field \"label\" must be true or false, got 1"},
        BadCase{"unpaired_data_for_pairs", ExampleKind::kPreference,
                DataConfig::NONE,
                "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": "
                "true}\n",
                ":1: field \"label\" belongs to unpaired examples (KTO), but "
                "the objective trains on preference pairs {\"prompt\", "
                "\"chosen\", \"rejected\"}"},
        BadCase{"unpaired_ids_for_demonstrations", ExampleKind::kDemonstration,
                DataConfig::NONE,
                "{\"prompt_ids\": [1], \"completion_ids\": [2], \"label\": "
                "false}\n",
                ":1: field \"label\" belongs to unpaired examples (KTO), but "
                "the objective trains on demonstrations {\"prompt_ids\", "
                "\"completion_ids\"}"},
        BadCase{"pairs_for_kto", ExampleKind::kUnpaired, DataConfig::NONE,
                kPair,
                ":1: field \"chosen\" belongs to preference pairs, but the "
                "objective trains on unpaired examples {\"prompt\", "
                "\"completion\", \"label\"}"},
        BadCase{"demonstrations_for_kto", ExampleKind::kUnpaired,
                DataConfig::NONE,
                "{\"prompt\": \"a\", \"completion\": \" b\"}\n",
                ":1: missing field \"label\" (unpaired examples, KTO's data, "
                "are {\"prompt\", \"completion\", \"label\"}"},
        BadCase{"field_of_the_other_kind", ExampleKind::kPreference,
                DataConfig::NONE,
                "{\"prompt\": \"a\", \"completion\": \"b\"}\n",
                ":1: field \"completion\" belongs to demonstrations"},
        BadCase{"text_and_ids_in_one_line", ExampleKind::kPreference,
                DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen_ids\": [1], \"rejected\": "
                "\"c\"}\n",
                ":1: field \"prompt\" is text but field \"chosen_ids\" is "
                "pre-tokenized"},
        BadCase{"mixed_text_then_ids", ExampleKind::kPreference,
                DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n"
                "\n"
                "{\"prompt_ids\": [1], \"chosen_ids\": [2], \"rejected_ids\": "
                "[3]}\n",
                ":3: this line is pre-tokenized (*_ids) data but the file's "
                "first example (line 1) is text"},
        BadCase{"mixed_text_then_chat", ExampleKind::kPreference,
                DataConfig::CHATML, std::string(kPair) + kChatPair,
                ":2: this line is conversational data but the file's first "
                "example (line 1) is text"},
        BadCase{"chat_without_template", ExampleKind::kPreference,
                DataConfig::NONE, kChatPair,
                ":1: a conversational example (\"prompt\" is a list of "
                "messages) needs a chat template: set data.chat_template"},
        BadCase{"chat_response_as_text", ExampleKind::kPreference,
                DataConfig::CHATML,
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], "
                "\"chosen\": \"b\", \"rejected\": \"c\"}\n",
                ":1: field \"chosen\" must be a list of {\"role\", "
                "\"content\"} messages"},
        BadCase{"text_response_as_chat", ExampleKind::kPreference,
                DataConfig::CHATML,
                "{\"prompt\": \"a\", \"chosen\": [{\"role\": \"assistant\", "
                "\"content\": \"b\"}], \"rejected\": \"c\"}\n",
                ":1: field \"chosen\" must be a string, got an array"},
        BadCase{"message_without_role", ExampleKind::kPreference,
                DataConfig::CHATML,
                "{\"prompt\": [{\"content\": \"a\"}], \"chosen\": [{\"role\": "
                "\"assistant\", \"content\": \"b\"}], \"rejected\": "
                "[{\"role\": \"assistant\", \"content\": \"c\"}]}\n",
                ":1: field \"prompt[0].role\" is missing"},
        BadCase{"message_without_content", ExampleKind::kPreference,
                DataConfig::LLAMA3,
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], "
                "\"chosen\": [{\"role\": \"assistant\"}], \"rejected\": "
                "[{\"role\": \"assistant\", \"content\": \"c\"}]}\n",
                ":1: field \"chosen[0].content\" is missing"},
        BadCase{"message_content_not_text", ExampleKind::kDemonstration,
                DataConfig::CHATML,
                "{\"prompt\": [{\"role\": \"user\", \"content\": [1]}], "
                "\"completion\": [{\"role\": \"assistant\", \"content\": "
                "\"b\"}]}\n",
                ":1: field \"prompt[0].content\" must be a string"},
        BadCase{"message_not_an_object", ExampleKind::kDemonstration,
                DataConfig::CHATML,
                "{\"prompt\": [\"hi\"], \"completion\": [{\"role\": "
                "\"assistant\", \"content\": \"b\"}]}\n",
                ":1: field \"prompt[0]\" must be a {\"role\", \"content\"} "
                "message object"},
        BadCase{"unknown_role", ExampleKind::kPreference, DataConfig::CHATML,
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}, "
                "{\"role\": \"narrator\", \"content\": \"a\"}], \"chosen\": "
                "[{\"role\": \"assistant\", \"content\": \"b\"}], "
                "\"rejected\": [{\"role\": \"assistant\", \"content\": "
                "\"c\"}]}\n",
                ":1: field \"prompt[1].role\" is the unknown role "
                "\"narrator\""},
        BadCase{"empty_message_list", ExampleKind::kPreference,
                DataConfig::CHATML,
                "{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], "
                "\"chosen\": [], \"rejected\": [{\"role\": \"assistant\", "
                "\"content\": \"c\"}]}\n",
                ":1: field \"chosen\" is an empty list"},
        BadCase{"bad_preference_fraction", ExampleKind::kPreference,
                DataConfig::NONE,
                "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", "
                "\"preference_fraction\": 1.5}\n",
                ":1: field \"preference_fraction\" must be a number in (0, 1)"},
        BadCase{"not_an_object", ExampleKind::kPreference, DataConfig::NONE,
                "[1, 2]\n", ":1: expected a JSON object, got array"}),
    [](const ::testing::TestParamInfo<BadCase>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace prefopt::data
