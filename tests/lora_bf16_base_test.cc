// A LoRA decoder with its frozen base in bf16 (LoraOptions::base_bf16,
// model.base_dtype: WEIGHT_BF16, docs/lora.md) is the fp32-base LoRA decoder
// whose blocks' linear weights were rounded to bf16 (nearest even) first:
// forward, backward (stored and recomputed), adapters off and incremental
// decoding bitwise, on the tiny GPT-2 and Llama fixtures and on a Llama whose
// fused gate|up parts start at odd offsets. Its base reads back rounded, and
// its memory, counted on the backend's allocations, holds those weights in
// half the bytes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/memory_purpose.h"
#include "tests/fixture_util.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/lora/lora_modules.h"
#include "trainer/model/decoder.h"
#include "trainer/util/rng.h"

namespace prefopt {
namespace {

using model::Decoder;

// The CPU backend, recording each allocation's floats under its purpose.
class CountingBackend : public kernels::CpuBackend {
 public:
  float* Alloc(size_t n) override {
    floats_[kernels::MemoryPurpose::Describe()] += n;
    return CpuBackend::Alloc(n);
  }
  // Floats allocated under purposes that contain `what`.
  size_t Floats(const std::string& what) const {
    size_t total = 0;
    for (const auto& [purpose, n] : floats_) {
      if (absl::StrContains(purpose, what)) total += n;
    }
    return total;
  }

 private:
  std::map<std::string, size_t> floats_;
};

// Round to nearest, ties to even, of a finite float (the scalar rule, written
// out here independently of the code under test).
float RoundToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t low = bits & 0xffffu;
  uint32_t high = bits >> 16;
  if (low > 0x8000u || (low == 0x8000u && (high & 1u) != 0)) ++high;
  bits = high << 16;
  float rounded;
  std::memcpy(&rounded, &bits, sizeof(rounded));
  return rounded;
}

bool Bitwise(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

model::Capacity Cap(bool checkpointing) {
  model::Capacity cap;
  cap.max_rows = 24;
  cap.max_seq_len = 12;
  cap.max_seqs = 2;
  cap.param_multiple = 32;
  cap.activation_checkpointing = checkpointing;
  return cap;
}

model::PackedBatch Batch(int vocab) {
  model::PackedBatch batch;
  std::vector<int32_t> a, b;
  for (int i = 0; i < 11; ++i) a.push_back((7 * i + 3) % vocab);
  for (int i = 0; i < 8; ++i) b.push_back((5 * i + 2) % vocab);
  batch.AddSequence(a);
  batch.AddSequence(b);
  return batch;
}

model::LoraOptions AllLinear(const io::ModelSpec& spec, bool bf16) {
  auto modules = lora::ResolveTargetModules(spec, {"all-linear"}, "targets");
  EXPECT_TRUE(modules.ok()) << modules.status();
  model::LoraOptions o;
  o.modules = *modules;
  o.r = 3;
  o.scaling = 1.5f;
  o.dropout = 0.1f;
  o.base_bf16 = bf16;
  return o;
}

// Nonzero adapters, the same for every decoder of `spec`.
void RandomAdapters(Decoder* d) {
  util::Rng rng(5);
  std::vector<float> host(d->layout().total());
  for (float& x : host) x = static_cast<float>(0.2 * rng.Normal());
  d->backend()->CopyToDevice(d->params(), host.data(), host.size());
}

// Runs the same forwards and backwards on `bf16` and `rounded` and expects
// every output bitwise equal.
void ExpectSameModel(Decoder* bf16, Decoder* rounded) {
  const int C = bf16->hidden_size();
  const model::PackedBatch batch = Batch(bf16->vocab_size());
  const size_t rows = static_cast<size_t>(batch.rows()) * C;
  util::Rng rng(9);
  for (int round = 0; round < 2; ++round) {
    for (Decoder* d : {bf16, rounded}) d->set_lora_dropout_seed(round + 20);
    const float* hidden = bf16->Forward(batch);
    const std::vector<float> h(hidden, hidden + rows);
    ASSERT_TRUE(Bitwise(h.data(), rounded->Forward(batch), rows))
        << "forward, round " << round;
    for (size_t i = 0; i < rows; ++i) {
      const float g = static_cast<float>(rng.Normal());
      bf16->dhidden()[i] = g;
      rounded->dhidden()[i] = g;
    }
    bf16->Backward(batch);
    rounded->Backward(batch);
    ASSERT_TRUE(
        Bitwise(bf16->grads(), rounded->grads(), bf16->padded_param_count()))
        << "backward, round " << round;
  }
  // The reference: adapters off.
  for (Decoder* d : {bf16, rounded}) d->set_adapters_enabled(false);
  const float* hidden = bf16->Forward(batch);
  const std::vector<float> off(hidden, hidden + rows);
  EXPECT_TRUE(Bitwise(off.data(), rounded->Forward(batch), rows));
  for (Decoder* d : {bf16, rounded}) d->set_adapters_enabled(true);
  // Incremental decoding, three tokens at a time.
  auto cache_a = bf16->NewKvCache(9);
  auto cache_b = rounded->NewKvCache(9);
  ASSERT_TRUE(cache_a.ok() && cache_b.ok());
  for (int step = 0; step < 3; ++step) {
    const std::vector<int32_t> tokens = {step + 1, 2 * step + 3, 4};
    const float* ha = bf16->ForwardIncremental(tokens, cache_a->get());
    const std::vector<float> copy(ha, ha + tokens.size() * C);
    const float* hb = rounded->ForwardIncremental(tokens, cache_b->get());
    EXPECT_TRUE(Bitwise(copy.data(), hb, copy.size())) << "step " << step;
  }
}

struct Pair {
  std::unique_ptr<Decoder> bf16, rounded;
};

// A bf16-base decoder loaded from `store`, and the fp32-base decoder of the
// same store with the bf16-held tensors rounded to bf16 on the host.
Pair Load(CountingBackend* backend, const io::ModelSpec& spec,
          const io::WeightStore& store, bool checkpointing) {
  Pair p;
  for (bool bf16 : {true, false}) {
    auto d = Decoder::Create(spec, backend, Cap(checkpointing), true,
                             AllLinear(spec, bf16));
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok()) return {};
    absl::Status s = (*d)->LoadHf(store);
    EXPECT_TRUE(s.ok()) << s;
    RandomAdapters(d->get());
    (bf16 ? p.bf16 : p.rounded) = *std::move(d);
  }
  const model::ParamLayout& layout = p.rounded->base_layout();
  std::vector<float> host(layout.total());
  p.rounded->CopyBaseToHost(host.data());
  size_t changed = 0, held = 0;
  for (const model::ParamTensor& t : layout.tensors()) {
    if (!p.bf16->IsHeldInBf16(t)) continue;
    ++held;
    for (size_t k = 0; k < t.numel; ++k) {
      float& x = host[t.offset + k];
      changed += RoundToBf16(x) != x;
      x = RoundToBf16(x);
    }
  }
  EXPECT_EQ(held, 4u * spec.n_layer);  // the four linear weights of a block
  EXPECT_GT(changed, 0u) << "the weights were bf16 already";
  backend->CopyToDevice(p.rounded->base_params(), host.data(), host.size());
  // The bf16 base reads back as the rounded weights.
  std::vector<float> back(layout.total());
  p.bf16->CopyBaseToHost(back.data());
  EXPECT_TRUE(Bitwise(back.data(), host.data(), host.size()));
  return p;
}

void FixtureCase(const std::string& folder) {
  const std::string dir = testing::WorkspacePath(folder);
  auto spec = io::ReadHfConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto store = io::WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(folder + (checkpointing ? " checkpointed" : " stored"));
    CountingBackend backend;
    Pair p = Load(&backend, *spec, *store, checkpointing);
    ASSERT_NE(p.bf16, nullptr);
    ExpectSameModel(p.bf16.get(), p.rounded.get());
  }
}

TEST(LoraBf16BaseTest, Gpt2IsTheRoundedFp32Model) {
  FixtureCase("tests/fixtures/gpt2/policy");
}

TEST(LoraBf16BaseTest, LlamaIsTheRoundedFp32Model) {
  FixtureCase("tests/fixtures/llama/llama3_untied/policy");
}

// Hidden 15 and intermediate 25: up_proj starts at value 25 * 15 of the fused
// gate|up tensor, an odd offset inside a float pair of backend memory.
TEST(LoraBf16BaseTest, FusedPartsAtOddOffsetsLoadExactly) {
  io::ModelSpec spec;
  spec.arch = io::ModelSpec::Arch::kLlama;
  spec.hf_architecture = "LlamaForCausalLM";
  spec.hf_model_type = "llama";
  spec.vocab_size = 29;
  spec.max_positions = 16;
  spec.hidden = 15;
  spec.n_layer = 2;
  spec.n_head = 2;
  spec.n_kv_head = 1;
  spec.head_dim = 6;
  spec.intermediate = 25;
  spec.activation = "silu";
  spec.attention_bias = true;
  spec.tie_word_embeddings = false;
  kernels::CpuBackend cpu;
  auto source = Decoder::Create(spec, &cpu, Cap(false), false);
  ASSERT_TRUE(source.ok()) << source.status();
  (*source)->InitRandom(3, 0.5f);
  const model::ParamLayout& layout = (*source)->base_layout();
  std::vector<float> base(layout.total());
  (*source)->CopyBaseToHost(base.data());
  std::vector<model::HfTensorRef> refs = layout.HfTensors();
  std::vector<std::vector<float>> hf(refs.size());
  std::vector<io::TensorToWrite> tensors;
  for (size_t i = 0; i < refs.size(); ++i) {
    hf[i].resize(refs[i].numel);
    model::LayoutToHf(refs[i], base.data() + refs[i].offset, hf[i].data());
    tensors.push_back({refs[i].name, refs[i].shape, hf[i].data()});
  }
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/odd";
  ASSERT_TRUE(
      io::WriteWeightStore(dir, tensors, io::DType::kF32, size_t{1} << 30)
          .ok());
  auto store = io::WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  CountingBackend backend;
  Pair p = Load(&backend, spec, *store, false);
  ASSERT_NE(p.bf16, nullptr);
  ExpectSameModel(p.bf16.get(), p.rounded.get());
}

// The bytes of the base: the bf16-held tensors take half of their fp32
// bytes, the rest stays fp32, plus one block's weights widened.
TEST(LoraBf16BaseTest, HoldsTheBlockWeightsInHalfTheBytes) {
  const std::string dir = testing::WorkspacePath("tests/fixtures/gpt2/policy");
  auto spec = io::ReadHfConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  CountingBackend fp32_backend, bf16_backend;
  auto fp32 = Decoder::Create(*spec, &fp32_backend, Cap(false), true,
                              AllLinear(*spec, false));
  auto bf16 = Decoder::Create(*spec, &bf16_backend, Cap(false), true,
                              AllLinear(*spec, true));
  ASSERT_TRUE(fp32.ok() && bf16.ok());
  auto aligned = [](size_t n) { return (n + 15) / 16 * 16; };
  size_t weights = 0, others = 0, widest = 0;
  for (int l = 0; l < spec->n_layer; ++l) {
    size_t block = 0;
    for (const model::ParamTensor& t : (*bf16)->base_layout().tensors()) {
      if ((*bf16)->IsHeldInBf16(t) &&
          absl::StrContains(t.name, ".h." + std::to_string(l) + ".")) {
        block += aligned(t.numel);
      }
    }
    widest = std::max(widest, block);
  }
  for (const model::ParamTensor& t : (*bf16)->base_layout().tensors()) {
    ((*bf16)->IsHeldInBf16(t) ? weights : others) += aligned(t.numel);
  }
  EXPECT_EQ(fp32_backend.Floats("frozen base weights"), weights + others);
  EXPECT_EQ(bf16_backend.Floats("frozen base weights (bf16"), weights / 2);
  EXPECT_EQ(bf16_backend.Floats("frozen base weights (fp32"), others);
  EXPECT_EQ(bf16_backend.Floats("one block's frozen weights in fp32"), widest);
  EXPECT_EQ((*fp32)->base_bytes(), (weights + others) * sizeof(float));
  EXPECT_EQ((*bf16)->base_bytes(),
            (weights / 2 + others + widest) * sizeof(float));
}

}  // namespace
}  // namespace prefopt
