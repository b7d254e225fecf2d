// Activation checkpointing (Capacity::activation_checkpointing) recomputes
// each block's forward during Backward from the block's saved input: the
// hidden states and every gradient equal the stored path's bit for bit, over
// two accumulated Forward/Backward rounds, for GPT-2, Llama and Qwen2; the
// blocks' gradients are reported ready in the same order; the observer sees
// each Forward tensor once; and the activation memory no longer grows with
// the layers' activations.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
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
  s.max_positions = 16;
  s.hidden = 16;
  s.n_layer = 3;
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

Capacity TinyCapacity(bool checkpointing) {
  Capacity cap;
  cap.max_rows = 20;
  cap.max_seq_len = 12;
  cap.max_seqs = 2;
  cap.activation_checkpointing = checkpointing;
  return cap;
}

PackedBatch Batch(int round) {
  PackedBatch batch;
  std::vector<int32_t> a, b;
  for (int i = 0; i < 11; ++i) a.push_back((3 * i + round) % 23);
  for (int i = 0; i < 7; ++i) b.push_back((5 * i + 2 * round + 1) % 23);
  batch.AddSequence(a);
  batch.AddSequence(b);
  return batch;
}

struct PassResult {
  std::vector<float> hidden;  // every round's final hidden states
  std::vector<float> grads;
  std::vector<int> ready_layers;
  int observed = 0;
};

class CountingObserver : public ActivationObserver {
 public:
  void Observe(const ActivationView&) override { ++count; }
  int count = 0;
};

PassResult ForwardBackward(io::ModelSpec::Arch arch, bool checkpointing) {
  kernels::CpuBackend backend;
  auto created = Decoder::Create(TinySpec(arch), &backend,
                                 TinyCapacity(checkpointing), true);
  EXPECT_TRUE(created.ok()) << created.status();
  PassResult run;
  if (!created.ok()) return run;
  Decoder& d = **created;
  d.InitRandom(11, 0.2f);
  d.set_grads_ready_callback(
      [&run](int layer, ParamRange) { run.ready_layers.push_back(layer); });
  CountingObserver observer;
  d.set_observer(&observer);
  util::Rng rng(5);
  const int C = d.hidden_size();
  for (int round = 0; round < 2; ++round) {
    const PackedBatch batch = Batch(round);
    const int N = batch.rows();
    const float* hidden = d.Forward(batch);
    run.hidden.insert(run.hidden.end(), hidden, hidden + N * C);
    for (int i = 0; i < N * C; ++i) {
      d.dhidden()[i] = static_cast<float>(rng.Normal());
    }
    d.Backward(batch);
  }
  run.observed = observer.count;
  run.grads.assign(d.grads(), d.grads() + d.padded_param_count());
  return run;
}

class CheckpointingTest : public ::testing::TestWithParam<io::ModelSpec::Arch> {
};

TEST_P(CheckpointingTest, GradientsAreBitwiseThoseOfTheStoredPath) {
  const PassResult stored = ForwardBackward(GetParam(), false);
  const PassResult recomputed = ForwardBackward(GetParam(), true);
  ASSERT_FALSE(stored.grads.empty());
  ASSERT_EQ(stored.hidden.size(), recomputed.hidden.size());
  EXPECT_EQ(std::memcmp(stored.hidden.data(), recomputed.hidden.data(),
                        stored.hidden.size() * sizeof(float)),
            0);
  ASSERT_EQ(stored.grads.size(), recomputed.grads.size());
  size_t differing = 0;
  for (size_t i = 0; i < stored.grads.size(); ++i) {
    if (std::memcmp(&stored.grads[i], &recomputed.grads[i], sizeof(float))) {
      ++differing;
    }
  }
  EXPECT_EQ(differing, 0u) << "of " << stored.grads.size() << " gradients";
  EXPECT_EQ(stored.ready_layers, recomputed.ready_layers);
  EXPECT_EQ(stored.ready_layers, (std::vector<int>{2, 1, 0, 2, 1, 0}));
  EXPECT_EQ(stored.observed, recomputed.observed);
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, CheckpointingTest,
    ::testing::Values(io::ModelSpec::Arch::kGpt2, io::ModelSpec::Arch::kLlama,
                      io::ModelSpec::Arch::kQwen2),
    [](const ::testing::TestParamInfo<io::ModelSpec::Arch>& info) {
      switch (info.param) {
        case io::ModelSpec::Arch::kGpt2:
          return std::string("Gpt2");
        case io::ModelSpec::Arch::kLlama:
          return std::string("Llama");
        case io::ModelSpec::Arch::kQwen2:
          return std::string("Qwen2");
      }
      return std::string("Unknown");
    });

// GPT-2-small's shape at 4096 tokens of up to 1024: the stored path keeps
// every layer's activations (attention probabilities included), the
// checkpointed path one layer's plus each layer's [N, C] output.
TEST(CheckpointingMemoryTest, ActivationMemoryIsOneBlockPlusLayerOutputs) {
  io::ModelSpec spec = TinySpec(io::ModelSpec::Arch::kGpt2);
  spec.vocab_size = 50257;
  spec.max_positions = 1024;
  spec.hidden = 768;
  spec.n_layer = 12;
  spec.n_head = 12;
  spec.n_kv_head = 12;
  spec.head_dim = 64;
  spec.intermediate = 3072;
  Capacity cap;
  cap.max_rows = 4096;
  cap.max_seq_len = 1024;
  cap.max_seqs = 4;
  // The smallest memory the stored path fits in is refused by
  // CheckModelFitsInMemory; checkpointing makes it fit with room to spare.
  uint64_t lo = 0, hi = uint64_t{1} << 40;
  while (lo + 1 < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    (CheckModelFitsInMemory(spec, cap, true, mid).ok() ? hi : lo) = mid;
  }
  const uint64_t stored_bytes = hi;
  cap.activation_checkpointing = true;
  lo = 0;
  hi = uint64_t{1} << 40;
  while (lo + 1 < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    (CheckModelFitsInMemory(spec, cap, true, mid).ok() ? hi : lo) = mid;
  }
  const uint64_t checkpointed_bytes = hi;
  // Per layer the stored path keeps N·(4C + 4 + QKV + ATT + NH·S + FF)
  // floats (the MLP activation, another N·FF, is one buffer for all
  // layers); checkpointing keeps N·C of them for 11 of the 12 layers.
  const uint64_t N = 4096, C = 768, FF = 3072, S = 1024, NH = 12;
  const uint64_t layer = N * (4 * C + 4 + 3 * C + C + NH * S + FF);
  EXPECT_EQ(stored_bytes - checkpointed_bytes,
            11 * (layer - N * C) * sizeof(float));
}

}  // namespace
}  // namespace prefopt::model
