// CpuBackend's two attention paths through a whole Decoder
// (docs/architecture.md, "Attention memory"): a batch whose probabilities fit
// in the backend's limit trains bitwise as a backend that always stores them;
// one above it takes the tiled path and agrees within fp32 rounding, hidden
// states and every gradient. And the memory check counts the backend's
// attention buffer, so a long-sequence capacity that the probabilities (n_head
// * T^2 per sequence) would not fit is accepted.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/model/decoder.h"
#include "trainer/util/rng.h"

namespace prefopt::model {
namespace {

io::ModelSpec TinySpec(io::ModelSpec::Arch arch) {
  io::ModelSpec s;
  s.arch = arch;
  const bool gpt2 = arch == io::ModelSpec::Arch::kGpt2;
  s.vocab_size = 23;
  s.max_positions = 160;
  s.hidden = 16;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = gpt2 ? 4 : 2;
  s.head_dim = 4;
  s.intermediate = gpt2 ? 64 : 24;
  s.activation = gpt2 ? "gelu_new" : "silu";
  s.attention_bias = arch != io::ModelSpec::Arch::kLlama;
  s.attention_out_bias = gpt2;
  s.mlp_bias = gpt2;
  s.tie_word_embeddings = arch != io::ModelSpec::Arch::kLlama;
  return s;
}

// The limit of the backend under test: 4 heads * (20^2 + 9^2) = 1924 floats
// fit, 4 * (150^2 + 70^2) = 109600 do not.
constexpr size_t kLimit = 4096;

PackedBatch Batch(int first_len, int second_len) {
  PackedBatch batch;
  std::vector<int32_t> a, b;
  for (int i = 0; i < first_len; ++i) a.push_back((3 * i + 1) % 23);
  for (int i = 0; i < second_len; ++i) b.push_back((5 * i + 2) % 23);
  batch.AddSequence(a);
  batch.AddSequence(b);
  return batch;
}

struct PassResult {
  bool stored = false;  // the path the backend took
  std::vector<float> hidden;
  std::vector<float> grads;
};

PassResult ForwardBackward(io::ModelSpec::Arch arch, size_t limit,
                           const PackedBatch& batch) {
  kernels::CpuBackend backend;
  backend.set_stored_attention_limit(limit);
  Capacity cap;
  cap.max_rows = 220;
  cap.max_seq_len = 150;
  cap.max_seqs = 2;
  auto created = Decoder::Create(TinySpec(arch), &backend, cap, true);
  EXPECT_TRUE(created.ok()) << created.status();
  PassResult run;
  if (!created.ok()) return run;
  Decoder& d = **created;
  d.InitRandom(11, 0.2f);
  run.stored = backend.StoresAttentionProbs(
      batch.spans.data(), static_cast<int>(batch.spans.size()),
      d.spec().n_head);
  const int N = batch.rows(), C = d.hidden_size();
  const float* hidden = d.Forward(batch);
  run.hidden.assign(hidden, hidden + N * C);
  util::Rng rng(5);
  for (int i = 0; i < N * C; ++i) {
    d.dhidden()[i] = static_cast<float>(rng.Normal());
  }
  d.Backward(batch);
  run.grads.assign(d.grads(), d.grads() + d.padded_param_count());
  return run;
}

// max |a - b| / max |b|.
double ErrorVsScale(const std::vector<float>& a, const std::vector<float>& b) {
  double error = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    error = std::max(error, std::fabs(double{a[i]} - b[i]));
    scale = std::max(scale, std::fabs(double{b[i]}));
  }
  return error / scale;
}

class AttentionPathTest : public ::testing::TestWithParam<io::ModelSpec::Arch> {
};

TEST_P(AttentionPathTest, ShortBatchIsBitwiseTheStoredPath) {
  const PackedBatch batch = Batch(20, 9);
  const PassResult chosen = ForwardBackward(GetParam(), kLimit, batch);
  const PassResult stored = ForwardBackward(GetParam(), SIZE_MAX, batch);
  EXPECT_TRUE(chosen.stored);
  ASSERT_FALSE(stored.grads.empty());
  ASSERT_EQ(chosen.hidden.size(), stored.hidden.size());
  ASSERT_EQ(chosen.grads.size(), stored.grads.size());
  EXPECT_EQ(std::memcmp(chosen.hidden.data(), stored.hidden.data(),
                        stored.hidden.size() * sizeof(float)),
            0);
  EXPECT_EQ(std::memcmp(chosen.grads.data(), stored.grads.data(),
                        stored.grads.size() * sizeof(float)),
            0);
}

TEST_P(AttentionPathTest, LongBatchIsTiledWithinRounding) {
  const PackedBatch batch = Batch(150, 70);
  const PassResult chosen = ForwardBackward(GetParam(), kLimit, batch);
  const PassResult stored = ForwardBackward(GetParam(), SIZE_MAX, batch);
  EXPECT_FALSE(chosen.stored);
  ASSERT_FALSE(stored.grads.empty());
  ASSERT_EQ(chosen.hidden.size(), stored.hidden.size());
  ASSERT_EQ(chosen.grads.size(), stored.grads.size());
  EXPECT_LE(ErrorVsScale(chosen.hidden, stored.hidden), 1e-5);
  EXPECT_LE(ErrorVsScale(chosen.grads, stored.grads), 1e-5);
  // Not the same arithmetic: the comparison above is not vacuous.
  EXPECT_NE(std::memcmp(chosen.grads.data(), stored.grads.data(),
                        stored.grads.size() * sizeof(float)),
            0);
}

INSTANTIATE_TEST_SUITE_P(
    Families, AttentionPathTest,
    ::testing::Values(io::ModelSpec::Arch::kGpt2, io::ModelSpec::Arch::kLlama),
    [](const ::testing::TestParamInfo<io::ModelSpec::Arch>& info) {
      return info.param == io::ModelSpec::Arch::kGpt2 ? "gpt2" : "llama";
    });

// 8192-token sequences: their probabilities (4 heads * 8192^2 floats, 1 GiB
// per block) do not fit in 512 MiB, the backend's buffer (its limit, 16 MiB
// per block) does.
TEST(AttentionMemory, CheckCountsTheBackendsBuffer) {
  io::ModelSpec spec = TinySpec(io::ModelSpec::Arch::kGpt2);
  spec.max_positions = 8192;
  Capacity cap;
  cap.max_rows = 8192;
  cap.max_seq_len = 8192;
  cap.max_seqs = 1;
  const uint64_t available = uint64_t{512} << 20;
  kernels::CpuBackend backend;
  const size_t buffer =
      backend.MaxAttentionProbsSize(cap.max_rows, cap.max_seq_len, spec.n_head);
  EXPECT_EQ(buffer, kernels::CpuBackend::kStoredAttentionLimit);
  EXPECT_FALSE(CheckModelFitsInMemory(spec, cap, true, available).ok());
  EXPECT_TRUE(
      CheckModelFitsInMemory(spec, cap, true, available, {}, buffer).ok());
}

}  // namespace
}  // namespace prefopt::model
