// Generation: incremental decoding with the key/value cache against full
// recomputation (hidden states and greedy tokens), greedy decoding against
// transformers' generate on the fixture models (fixtures/generation/, written
// by generate_generation.py), and the sampling rules of PickToken.
#include "trainer/model/generation.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/fixture_util.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/model/decoder.h"

namespace prefopt {
namespace {

using model::Decoder;
using model::GenerationOptions;
using model::Generator;
using model::PickToken;

const std::vector<std::string>& FixtureModels() {
  static const auto* models = new std::vector<std::string>{
      "gpt2/policy", "llama/tied/policy", "llama/llama3_untied/policy",
      "mistral/policy", "qwen2/policy"};
  return *models;
}

// A frozen decoder of the fixture model `name` (a folder under
// tests/fixtures/).
std::unique_ptr<Decoder> LoadFixture(const std::string& name,
                                     kernels::Backend* backend,
                                     const model::Capacity& capacity) {
  const std::string dir = testing::WorkspacePath("tests/fixtures/" + name);
  auto spec = io::ReadHfConfig(dir);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto store = io::WeightStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  auto decoder = Decoder::Create(*spec, backend, capacity, false);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  const absl::Status s = (*decoder)->LoadHf(*store);
  EXPECT_TRUE(s.ok()) << s;
  return *std::move(decoder);
}

model::Capacity SequenceCapacity(int max_rows, int max_seq_len) {
  model::Capacity c;
  c.max_rows = max_rows;
  c.max_seq_len = max_seq_len;
  c.max_seqs = 1;
  return c;
}

// The logits of row `row` of `hidden`.
std::vector<float> RowLogits(Decoder& d, const float* hidden, int row) {
  std::vector<float> logits(d.vocab_size());
  d.backend()->MatmulForward(
      logits.data(), hidden + static_cast<size_t>(row) * d.hidden_size(),
      d.output_embedding(), nullptr, 1, d.hidden_size(), d.vocab_size());
  return logits;
}

// Greedy decoding without a cache: the whole sequence is run again for every
// new token.
std::vector<int32_t> GreedyByRecomputation(Decoder& d,
                                           const std::vector<int32_t>& prompt,
                                           int new_tokens) {
  std::vector<int32_t> seq = prompt;
  model::PackedBatch batch;
  for (int i = 0; i < new_tokens; ++i) {
    batch.Clear();
    batch.AddSequence(seq);
    const float* hidden = d.Forward(batch);
    const std::vector<float> logits = RowLogits(d, hidden, batch.rows() - 1);
    seq.push_back(static_cast<int32_t>(
        std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  return std::vector<int32_t>(seq.begin() + prompt.size(), seq.end());
}

struct GreedyCase {
  std::string model;
  std::vector<int32_t> prompt, generated;
};

std::vector<GreedyCase> ReadGreedyCases(int* max_new_tokens, int* eos) {
  std::ifstream in(
      testing::WorkspacePath("tests/fixtures/generation/greedy.json"));
  const nlohmann::json j = nlohmann::json::parse(in);
  *max_new_tokens = j["max_new_tokens"].get<int>();
  *eos = j["eos_token_id"].get<int>();
  std::vector<GreedyCase> cases;
  for (const auto& c : j["cases"]) {
    cases.push_back({c["model"].get<std::string>(),
                     c["prompt_ids"].get<std::vector<int32_t>>(),
                     c["generated_ids"].get<std::vector<int32_t>>()});
  }
  return cases;
}

// Each row ForwardIncremental returns equals Forward's row of the whole
// sequence: a 10-token prompt in chunks of 4 (cached rows before every chunk
// but the first), then single tokens.
TEST(KvCacheTest, IncrementalHiddenStatesMatchTheFullForward) {
  kernels::CpuBackend backend;
  const std::vector<int32_t> seq = {3,  14, 15, 92, 65, 35, 89, 79,
                                    32, 38, 46, 26, 43, 38, 32, 79};
  const int prompt = 10;
  for (const std::string& name : FixtureModels()) {
    SCOPED_TRACE(name);
    auto full = LoadFixture(name, &backend, SequenceCapacity(16, 16));
    auto incremental = LoadFixture(name, &backend, SequenceCapacity(4, 16));
    model::PackedBatch batch;
    batch.AddSequence(seq);
    const float* hidden = full->Forward(batch);
    const int C = full->hidden_size();
    const std::vector<float> expected(hidden, hidden + seq.size() * C);

    auto cache = incremental->NewKvCache(16);
    ASSERT_TRUE(cache.ok()) << cache.status();
    int done = 0;
    while (done < static_cast<int>(seq.size())) {
      const int n = done < prompt ? std::min(4, prompt - done) : 1;
      const float* rows = incremental->ForwardIncremental(
          absl::MakeConstSpan(seq).subspan(done, n), cache->get());
      for (int i = 0; i < n * C; ++i) {
        ASSERT_NEAR(rows[i], expected[done * C + i], 2e-5)
            << "token " << done + i / C << " column " << i % C;
      }
      done += n;
      ASSERT_EQ((*cache)->length(), done);
    }
  }
}

TEST(KvCacheTest, RejectsACacheLongerThanTheCapacity) {
  kernels::CpuBackend backend;
  auto d = LoadFixture("gpt2/policy", &backend, SequenceCapacity(4, 16));
  EXPECT_FALSE(d->NewKvCache(17).ok());
  EXPECT_FALSE(d->NewKvCache(0).ok());
}

// Greedy generation with the cache produces the same tokens as running the
// whole sequence again for every token.
TEST(GeneratorTest, GreedyWithTheCacheEqualsGreedyByRecomputation) {
  kernels::CpuBackend backend;
  int max_new = 0, eos = 0;
  const std::vector<GreedyCase> cases = ReadGreedyCases(&max_new, &eos);
  for (const std::string& name : FixtureModels()) {
    SCOPED_TRACE(name);
    auto full = LoadFixture(name, &backend, SequenceCapacity(48, 48));
    auto cached = LoadFixture(name, &backend, SequenceCapacity(5, 48));
    auto generator = Generator::Create(cached.get());
    ASSERT_TRUE(generator.ok()) << generator.status();
    for (const GreedyCase& c : cases) {
      if (c.model != name) continue;
      GenerationOptions options;
      options.max_new_tokens = 30;
      auto tokens = (*generator)->Generate(c.prompt, options);
      ASSERT_TRUE(tokens.ok()) << tokens.status();
      EXPECT_EQ(*tokens, GreedyByRecomputation(*full, c.prompt, 30))
          << "prompt of " << c.prompt.size() << " tokens";
    }
  }
}

// Token for token what transformers' generate(do_sample=False) gave,
// stopping after the eos id as it does.
TEST(GeneratorTest, GreedyMatchesTransformers) {
  kernels::CpuBackend backend;
  int max_new = 0, eos = 0;
  const std::vector<GreedyCase> cases = ReadGreedyCases(&max_new, &eos);
  ASSERT_EQ(cases.size(), 15u);
  int stopped_at_eos = 0;
  for (const GreedyCase& c : cases) {
    SCOPED_TRACE(c.model);
    auto d = LoadFixture(c.model, &backend, SequenceCapacity(8, 40));
    auto generator = Generator::Create(d.get());
    ASSERT_TRUE(generator.ok()) << generator.status();
    GenerationOptions options;
    options.max_new_tokens = max_new;
    options.stop_ids = {eos};
    auto tokens = (*generator)->Generate(c.prompt, options);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(*tokens, c.generated);
    if (static_cast<int>(c.generated.size()) < max_new) ++stopped_at_eos;
  }
  // The stop rule is exercised, not only the length limit.
  EXPECT_GT(stopped_at_eos, 0);
}

TEST(GeneratorTest, SamplingIsSeededAndStaysInTheNucleus) {
  kernels::CpuBackend backend;
  auto d = LoadFixture("gpt2/policy", &backend, SequenceCapacity(8, 40));
  auto generator = Generator::Create(d.get());
  ASSERT_TRUE(generator.ok()) << generator.status();
  GenerationOptions options;
  options.max_new_tokens = 20;
  options.temperature = 1.5;
  options.top_p = 0.9;
  const std::vector<int32_t> prompt = {5, 6, 7};
  std::map<uint64_t, std::vector<int32_t>> by_seed;
  for (uint64_t seed : {1, 2, 1}) {
    options.seed = seed;
    auto tokens = (*generator)->Generate(prompt, options);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    ASSERT_EQ(tokens->size(), 20u);
    if (by_seed.count(seed)) {
      EXPECT_EQ(*tokens, by_seed[seed]) << "seed " << seed;
    }
    by_seed[seed] = *tokens;
  }
  EXPECT_NE(by_seed[1], by_seed[2]);
}

TEST(GeneratorTest, ExplainsBadRequests) {
  kernels::CpuBackend backend;
  auto d = LoadFixture("gpt2/policy", &backend, SequenceCapacity(8, 20));
  auto generator = Generator::Create(d.get());
  ASSERT_TRUE(generator.ok()) << generator.status();
  GenerationOptions options;
  options.max_new_tokens = 10;
  auto expect_error = [&](const std::vector<int32_t>& prompt,
                          const GenerationOptions& o, const std::string& text) {
    auto r = (*generator)->Generate(prompt, o);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status();
  };
  expect_error({}, options, "the prompt is empty");
  expect_error({1, 101}, options, "prompt token 1 is 101, outside");
  expect_error(std::vector<int32_t>(11, 1), options, "make 21 tokens");
  GenerationOptions bad = options;
  bad.top_p = 0;
  expect_error({1}, bad, "top_p must be in (0, 1]");
  bad = options;
  bad.temperature = -1;
  expect_error({1}, bad, "temperature must be");
  bad = options;
  bad.max_new_tokens = 0;
  expect_error({1}, bad, "max_new_tokens must be >= 1");
}

TEST(PickTokenTest, GreedyTakesTheFirstMaximum) {
  util::Rng rng(1);
  EXPECT_EQ(PickToken(std::vector<float>{1, 3, 3, 2}, 0.0, 1.0, &rng), 1);
  EXPECT_EQ(PickToken(std::vector<float>{-1, -5}, 0.0, 0.1, &rng), 0);
}

// Frequencies of 40000 draws against the exact probabilities.
std::vector<double> Frequencies(const std::vector<float>& logits, double t,
                                double top_p) {
  util::Rng rng(7);
  std::vector<double> f(logits.size());
  const int draws = 40000;
  for (int i = 0; i < draws; ++i) f[PickToken(logits, t, top_p, &rng)] += 1;
  for (double& x : f) x /= draws;
  return f;
}

TEST(PickTokenTest, TemperatureSamplesTheScaledSoftmax) {
  const std::vector<double> p = {0.1, 0.2, 0.3, 0.4};
  std::vector<float> logits;
  for (double x : p) logits.push_back(static_cast<float>(std::log(x)));
  std::vector<double> f = Frequencies(logits, 1.0, 1.0);
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(f[i], p[i], 0.01) << i;
  // Temperature 2: probabilities proportional to sqrt(p).
  double norm = 0;
  for (double x : p) norm += std::sqrt(x);
  f = Frequencies(logits, 2.0, 1.0);
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_NEAR(f[i], std::sqrt(p[i]) / norm, 0.01) << i;
  }
}

TEST(PickTokenTest, TopPKeepsTheSmallestSetReachingP) {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.2f),
                                     std::log(0.3f), std::log(0.4f)};
  // 0.4 < 0.5, 0.4 + 0.3 >= 0.5: tokens 3 and 2, renormalized.
  std::vector<double> f = Frequencies(logits, 1.0, 0.5);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_EQ(f[1], 0.0);
  EXPECT_NEAR(f[2], 3.0 / 7.0, 0.01);
  EXPECT_NEAR(f[3], 4.0 / 7.0, 0.01);
  // A tiny top_p keeps only the most likely token.
  f = Frequencies(logits, 1.0, 1e-6);
  EXPECT_EQ(f[3], 1.0);
}

}  // namespace
}  // namespace prefopt
