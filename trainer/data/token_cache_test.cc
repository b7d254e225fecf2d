// The token cache: round trip, keys, and every way a cache file can be
// unusable (truncated at any length, a flipped byte, stale, a writer killed
// mid-write) is detected and never read as data.
#include "trainer/data/token_cache.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"

namespace prefopt::data {
namespace {

namespace fs = std::filesystem;

std::string TempPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Examples as LoadDataset makes them, one with every part.
Dataset Sample(int n) {
  Dataset ds;
  ds.kind = ExampleKind::kDemonstration;
  for (int i = 0; i < n; ++i) {
    Example ex;
    if (i % 2 == 0) ex.context = {7, 8};
    ex.prompt = {1, 2, i};
    ex.chosen = {3, 4, 5, i + 1};
    ex.source = "data.jsonl:" + std::to_string(2 * i + 1);
    ds.examples.push_back(ex);
  }
  ds.dropped_too_long = 3;
  ds.truncated = 2;
  return ds;
}

void ExpectSame(const Dataset& got, const Dataset& want) {
  ASSERT_EQ(got.examples.size(), want.examples.size());
  for (size_t i = 0; i < got.examples.size(); ++i) {
    const Example& a = got.examples[i];
    const Example& b = want.examples[i];
    EXPECT_EQ(a.context, b.context);
    EXPECT_EQ(a.prompt, b.prompt);
    EXPECT_EQ(a.chosen, b.chosen);
    EXPECT_EQ(a.rejected, b.rejected);
    EXPECT_EQ(a.preference_fraction, b.preference_fraction);
    EXPECT_EQ(a.source, b.source);
  }
  EXPECT_EQ(got.dropped_too_long, want.dropped_too_long);
  EXPECT_EQ(got.truncated, want.truncated);
  EXPECT_EQ(got.identical_responses, want.identical_responses);
  EXPECT_EQ(got.kind, want.kind);
}

TEST(TokenCacheTest, RoundTripsPairsAndDemonstrations) {
  const std::string path = TempPath("demo.tokcache");
  const Dataset demo = Sample(5);
  ASSERT_TRUE(WriteTokenCache(path, 42, demo).ok());
  absl::StatusOr<Dataset> got =
      ReadTokenCache(path, 42, ExampleKind::kDemonstration, "data.jsonl");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, demo);

  Dataset pairs;
  pairs.kind = ExampleKind::kPreference;
  Example ex;
  ex.prompt = {1};
  ex.chosen = {2, 3};
  ex.rejected = {2, 3};
  ex.preference_fraction = 0.75f;
  ex.source = "p.jsonl:9";
  pairs.examples = {ex};
  pairs.identical_responses = 1;
  ASSERT_TRUE(WriteTokenCache(path, 7, pairs).ok());
  got = ReadTokenCache(path, 7, ExampleKind::kPreference, "p.jsonl");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, pairs);
}

TEST(TokenCacheTest, MissingStaleAndOtherKindAreTold) {
  const std::string path = TempPath("stale.tokcache");
  EXPECT_TRUE(absl::IsNotFound(
      ReadTokenCache(path, 1, ExampleKind::kDemonstration, "d").status()));
  ASSERT_TRUE(WriteTokenCache(path, 1, Sample(2)).ok());
  absl::Status stale =
      ReadTokenCache(path, 2, ExampleKind::kDemonstration, "d").status();
  EXPECT_TRUE(absl::IsFailedPrecondition(stale)) << stale;
  EXPECT_NE(stale.message().find("stale"), absl::string_view::npos);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      ReadTokenCache(path, 1, ExampleKind::kPreference, "d").status()));
}

TEST(TokenCacheTest, EveryTruncationAndEveryFlippedByteIsDetected) {
  const std::string path = TempPath("damaged.tokcache");
  ASSERT_TRUE(WriteTokenCache(path, 9, Sample(3)).ok());
  const std::string good = ReadBytes(path);
  ASSERT_GT(good.size(), 100u);
  for (size_t size = 0; size < good.size(); ++size) {
    WriteBytes(path, good.substr(0, size));
    absl::Status s =
        ReadTokenCache(path, 9, ExampleKind::kDemonstration, "d").status();
    EXPECT_TRUE(absl::IsDataLoss(s)) << "truncated to " << size << ": " << s;
  }
  WriteBytes(path, good + "x");
  EXPECT_TRUE(absl::IsDataLoss(
      ReadTokenCache(path, 9, ExampleKind::kDemonstration, "d").status()));
  // A flipped byte of the key or kind reads as stale, any other as damage.
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x10;
    WriteBytes(path, bad);
    absl::Status s =
        ReadTokenCache(path, 9, ExampleKind::kDemonstration, "d").status();
    if (i >= 8 && i < 20) {
      EXPECT_TRUE(absl::IsFailedPrecondition(s)) << "byte " << i << ": " << s;
    } else {
      EXPECT_TRUE(absl::IsDataLoss(s)) << "byte " << i << ": " << s;
    }
  }
}

TEST(TokenCacheTest, AWriterKilledMidWriteLeavesTheOldCache) {
  const std::string path = TempPath("killed.tokcache");
  const Dataset old = Sample(2);
  ASSERT_TRUE(WriteTokenCache(path, 5, old).ok());
  const std::string before = ReadBytes(path);
  const Dataset big = Sample(20000);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The kernel kills the writer with SIGXFSZ once its temporary file
    // reaches 64 KiB: a crash in the middle of writing.
    rlimit limit = {64 << 10, 64 << 10};
    setrlimit(RLIMIT_FSIZE, &limit);
    WriteTokenCache(path, 6, big).IgnoreError();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the writer was not killed";
  EXPECT_EQ(WTERMSIG(status), SIGXFSZ);
  // The cache is the old one, whole; the new one never appeared.
  EXPECT_EQ(ReadBytes(path), before);
  absl::StatusOr<Dataset> got =
      ReadTokenCache(path, 5, ExampleKind::kDemonstration, "data.jsonl");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, old);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      ReadTokenCache(path, 6, ExampleKind::kDemonstration, "d").status()));
}

TEST(TokenCachePathTest, NextToTheDataOrUnderTheCacheDir) {
  EXPECT_EQ(TokenCachePath("/d/train.jsonl", ""), "/d/train.jsonl.tokcache");
  const std::string a = TokenCachePath("/x/train.jsonl", "/cache");
  const std::string b = TokenCachePath("/y/train.jsonl", "/cache");
  EXPECT_EQ(fs::path(a).parent_path(), "/cache");
  EXPECT_EQ(a.rfind("/cache/train.jsonl.", 0), 0u) << a;
  EXPECT_NE(a, b);
}

TEST(TokenCacheKeyTest, ChangesWithEveryInput) {
  const std::string data = TempPath("key_data.jsonl");
  const std::string tok = TempPath("key_tokenizer.json");
  const std::string config = TempPath("key_tokenizer_config.json");
  WriteBytes(data, "{\"prompt\": \"a\"}\n");
  WriteBytes(tok, "{}");
  TokenCacheInputs in;
  in.data_file = data;
  in.tokenizer_json = tok;
  in.tokenizer_config = config;  // absent
  in.vocab_size = 100;
  in.truncation.max_length = 64;
  const uint64_t base = *TokenCacheKey(in);
  EXPECT_EQ(*TokenCacheKey(in), base);
  auto changed = [&](auto edit) {
    TokenCacheInputs other = in;
    edit(other);
    return *TokenCacheKey(other) != base;
  };
  EXPECT_TRUE(changed([](TokenCacheInputs& o) { o.vocab_size = 101; }));
  EXPECT_TRUE(
      changed([](TokenCacheInputs& o) { o.truncation.max_length = 65; }));
  EXPECT_TRUE(
      changed([](TokenCacheInputs& o) { o.truncation.max_prompt_length = 3; }));
  EXPECT_TRUE(
      changed([](TokenCacheInputs& o) { o.truncation.mode = KEEP_START; }));
  EXPECT_TRUE(changed(
      [](TokenCacheInputs& o) { o.chat_template = DataConfig::CHATML; }));
  EXPECT_TRUE(changed(
      [](TokenCacheInputs& o) { o.kind = ExampleKind::kDemonstration; }));
  WriteBytes(config, "{}");
  EXPECT_NE(*TokenCacheKey(in), base);
  fs::remove(config);
  WriteBytes(tok, "{ }");
  EXPECT_NE(*TokenCacheKey(in), base);
  WriteBytes(tok, "{}");
  WriteBytes(data, "{\"prompt\": \"b\"}\n");
  EXPECT_NE(*TokenCacheKey(in), base);
  in.data_file = TempPath("no_such_file.jsonl");
  EXPECT_FALSE(TokenCacheKey(in).ok());
}

}  // namespace
}  // namespace prefopt::data
