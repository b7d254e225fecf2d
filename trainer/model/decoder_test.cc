// Decoder::Create refuses a model that does not fit in memory before
// allocating, and LoadHf refuses weights that disagree with config.json or
// hold NaN/infinite values.
#include "trainer/model/decoder.h"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/io/weight_store.h"

namespace prefopt::model {
namespace {

io::ModelSpec TinyLlama() {
  io::ModelSpec s;
  s.arch = io::ModelSpec::Arch::kLlama;
  s.hf_architecture = "LlamaForCausalLM";
  s.hf_model_type = "llama";
  s.vocab_size = 11;
  s.max_positions = 8;
  s.hidden = 8;
  s.n_layer = 2;
  s.n_head = 2;
  s.n_kv_head = 1;
  s.head_dim = 4;
  s.intermediate = 12;
  s.activation = "silu";
  s.tie_word_embeddings = false;
  return s;
}

Capacity SmallCapacity() {
  Capacity cap;
  cap.max_rows = 8;
  cap.max_seq_len = 8;
  cap.max_seqs = 1;
  return cap;
}

std::string TempDir(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/", name);
}

// Writes the Hugging Face tensors of a decoder of `spec` to `dir`, every
// value 0.01, then `poison` (if given) at flat index 5 of tensor `poisoned`.
std::string WriteWeights(const std::string& name, const io::ModelSpec& spec,
                         const std::string& poisoned = "",
                         float poison = 0.0f) {
  kernels::CpuBackend backend;
  auto d = Decoder::Create(spec, &backend, SmallCapacity(), false);
  EXPECT_TRUE(d.ok()) << d.status();
  const std::vector<HfTensorRef> refs = (*d)->layout().HfTensors();
  std::vector<std::vector<float>> values;
  for (const HfTensorRef& ref : refs) {
    values.emplace_back(ref.numel, 0.01f);
    if (ref.name == poisoned) values.back()[5] = poison;
  }
  std::vector<io::TensorToWrite> tensors;
  for (size_t i = 0; i < refs.size(); ++i) {
    tensors.push_back({refs[i].name, refs[i].shape, values[i].data()});
  }
  const std::string dir = TempDir(name);
  EXPECT_TRUE(
      io::WriteWeightStore(dir, tensors, io::DType::kF32, size_t{1} << 30)
          .ok());
  return dir;
}

absl::Status Load(const io::ModelSpec& spec, const std::string& dir) {
  kernels::CpuBackend backend;
  auto d = Decoder::Create(spec, &backend, SmallCapacity(), true);
  if (!d.ok()) return d.status();
  auto store = io::WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  return (*d)->LoadHf(*store);
}

::testing::AssertionResult ErrorHas(const absl::Status& status,
                                    std::vector<std::string> parts) {
  if (status.ok()) return ::testing::AssertionFailure() << "no error";
  for (const std::string& part : parts) {
    if (!absl::StrContains(status.message(), part)) {
      return ::testing::AssertionFailure()
             << status.message() << "\nlacks: " << part;
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(DecoderMemoryTest, RefusesAModelBeyondMemoryBeforeAllocating) {
  io::ModelSpec huge = TinyLlama();
  huge.vocab_size = std::numeric_limits<int32_t>::max();
  huge.hidden = 1 << 20;
  kernels::CpuBackend backend;
  auto d = Decoder::Create(huge, &backend, SmallCapacity(), true);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(ErrorHas(d.status(), {"vocab_size 2147483647", "needs ",
                                    "bytes of memory are available"}));
}

TEST(DecoderMemoryTest, ReportsBytesNeededAndAvailable) {
  const io::ModelSpec spec = TinyLlama();
  EXPECT_TRUE(
      CheckModelFitsInMemory(spec, SmallCapacity(), true, std::nullopt).ok());
  EXPECT_TRUE(
      CheckModelFitsInMemory(spec, SmallCapacity(), true, uint64_t{1} << 30)
          .ok());
  EXPECT_TRUE(
      ErrorHas(CheckModelFitsInMemory(spec, SmallCapacity(), true, 1000),
               {"bytes for its parameters, gradients, AdamW moments and "
                "activations",
                "but 1000 bytes of memory are available"}));
  // Sizes whose products overflow 64 bits saturate instead of wrapping to a
  // small number that would pass.
  io::ModelSpec overflowing = spec;
  overflowing.vocab_size = overflowing.hidden = overflowing.n_layer =
      overflowing.intermediate = std::numeric_limits<int32_t>::max();
  EXPECT_TRUE(ErrorHas(CheckModelFitsInMemory(overflowing, SmallCapacity(),
                                              false, uint64_t{1} << 40),
                       {"needs more than 2^64 bytes"}));
}

// The output layer's and objective's buffers, allocated after the model, are
// counted with it: the smallest memory that fits grows by exactly them.
TEST(DecoderMemoryTest, CountsTheObjectiveFloats) {
  const io::ModelSpec spec = TinyLlama();
  auto smallest_fit = [&](const Capacity& cap) {
    uint64_t lo = 0, hi = uint64_t{1} << 40;
    while (lo + 1 < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      (CheckModelFitsInMemory(spec, cap, true, mid).ok() ? hi : lo) = mid;
    }
    return hi;
  };
  Capacity cap = SmallCapacity();
  const uint64_t without = smallest_fit(cap);
  cap.objective_floats = 12345;
  EXPECT_EQ(smallest_fit(cap) - without, 12345 * sizeof(float));
  EXPECT_TRUE(ErrorHas(CheckModelFitsInMemory(spec, cap, true, 1000),
                       {") with the output layer and objective (49380 bytes), "
                        "but 1000",
                        "output_chunk_tokens"}));
}

TEST(DecoderMemoryTest, RefusesAKeyValueCacheBeyondMemory) {
  // Small parameters and activations, but 20000 layers of 2^20 positions of
  // 16 floats: 1.3 TB of cache.
  io::ModelSpec deep = TinyLlama();
  deep.n_layer = 20000;
  deep.max_positions = 1 << 20;
  Capacity cap;
  cap.max_rows = 1;
  cap.max_seq_len = deep.max_positions;
  kernels::CpuBackend backend;
  auto d = Decoder::Create(deep, &backend, cap, false);
  ASSERT_TRUE(d.ok()) << d.status();
  auto cache = (*d)->NewKvCache(cap.max_seq_len);
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(ErrorHas(cache.status(),
                       {"a key/value cache of 1048576 tokens for 20000 layers "
                        "needs 1342177280000 bytes"}));
}

TEST(DecoderLoadTest, LoadsMatchingWeights) {
  EXPECT_TRUE(Load(TinyLlama(), WriteWeights("matching", TinyLlama())).ok());
}

TEST(DecoderLoadTest, RefusesWeightsOfMoreLayers) {
  io::ModelSpec one_layer = TinyLlama();
  one_layer.n_layer = 1;
  EXPECT_TRUE(ErrorHas(Load(one_layer, WriteWeights("two_layers", TinyLlama())),
                       {"tensor(s) the model does not use", "'model.layers.1.",
                        "model.safetensors",
                        "num_hidden_layers is 1, but the weights have "
                        "layer 1"}));
}

TEST(DecoderLoadTest, RefusesBiasesTheConfigTurnsOff) {
  io::ModelSpec with_bias = TinyLlama();
  with_bias.attention_bias = with_bias.attention_out_bias = true;
  EXPECT_TRUE(ErrorHas(Load(TinyLlama(), WriteWeights("biases", with_bias)),
                       {".bias'", "attention_bias is false"}));
}

TEST(DecoderLoadTest, RefusesNonFiniteWeights) {
  const std::string tensor = "model.layers.1.self_attn.k_proj.weight";
  EXPECT_TRUE(ErrorHas(
      Load(TinyLlama(), WriteWeights("nan", TinyLlama(), tensor,
                                     std::numeric_limits<float>::quiet_NaN())),
      {"model.safetensors: tensor '" + tensor + "' holds NaN at flat index 5",
       "(of 32)"}));
  EXPECT_TRUE(ErrorHas(
      Load(TinyLlama(), WriteWeights("inf", TinyLlama(), "lm_head.weight",
                                     -std::numeric_limits<float>::infinity())),
      {"'lm_head.weight' holds an infinity at flat index 5"}));
}

TEST(DecoderLoadTest, TiedOutputLayerMustMatchASavedLmHead) {
  io::ModelSpec tied = TinyLlama();
  tied.tie_word_embeddings = true;
  // Untied weights whose lm_head.weight equals the embedding: what a tied
  // model saved with its output layer looks like.
  const std::string same = WriteWeights("same_head", TinyLlama());
  EXPECT_TRUE(Load(tied, same).ok()) << Load(tied, same);
  const std::string different =
      WriteWeights("different_head", TinyLlama(), "lm_head.weight", 0.5f);
  EXPECT_TRUE(ErrorHas(Load(tied, different), {"'lm_head.weight' differs from "
                                               "'model.embed_tokens.weight'",
                                               "tie_word_embeddings is true"}));
}

}  // namespace
}  // namespace prefopt::model
