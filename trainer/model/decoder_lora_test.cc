// LoRA in the decoder (docs/lora.md): finite-difference checks of every
// adapter gradient (every projection kind, the fused q|k|v and gate|up
// parts, GPT-2's Conv1D layers, use_rslora's scaling, a fixed dropout mask);
// layer 0's adapters see the input gradients of every adapter above them,
// so those are checked too. The adapted forward equals the model with merged
// weights W + s B A; adapters off is the base model bitwise; activation
// checkpointing reruns the adapters bitwise; the trainable buffer holds only
// the adapters, block by block.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/lora/lora_modules.h"
#include "trainer/model/decoder.h"
#include "trainer/util/rng.h"

namespace prefopt::model {
namespace {

using Arch = io::ModelSpec::Arch;

io::ModelSpec TinySpec(Arch arch) {
  io::ModelSpec s;
  s.arch = arch;
  const bool gpt2 = arch == Arch::kGpt2;
  s.vocab_size = 23;
  s.max_positions = 16;
  s.hidden = 16;
  s.n_layer = 3;
  s.n_head = 4;
  s.n_kv_head = gpt2 ? 4 : 2;
  s.head_dim = 4;
  s.intermediate = gpt2 ? 32 : 24;
  s.activation = gpt2 ? "gelu_new" : "silu";
  s.attention_bias = arch != Arch::kLlama;
  s.attention_out_bias = gpt2;
  s.mlp_bias = gpt2;
  s.tie_word_embeddings = arch != Arch::kLlama;
  return s;
}

Capacity TinyCapacity(bool checkpointing = false) {
  Capacity cap;
  cap.max_rows = 20;
  cap.max_seq_len = 12;
  cap.max_seqs = 2;
  cap.param_multiple = 32;
  cap.activation_checkpointing = checkpointing;
  return cap;
}

PackedBatch Batch() {
  PackedBatch batch;
  std::vector<int32_t> a, b;
  for (int i = 0; i < 9; ++i) a.push_back((3 * i + 1) % 23);
  for (int i = 0; i < 6; ++i) b.push_back((5 * i + 2) % 23);
  batch.AddSequence(a);
  batch.AddSequence(b);
  return batch;
}

LoraOptions Lora(const io::ModelSpec& spec, std::vector<std::string> targets,
                 bool rslora = false, float dropout = 0.0f) {
  auto modules = lora::ResolveTargetModules(spec, targets, "targets");
  EXPECT_TRUE(modules.ok()) << modules.status();
  LoraOptions o;
  o.modules = *modules;
  o.r = 2;
  o.scaling = rslora ? 3.0f / std::sqrt(2.0f) : 3.0f / 2;
  o.dropout = dropout;
  return o;
}

std::unique_ptr<Decoder> Make(kernels::Backend* backend,
                              const io::ModelSpec& spec,
                              const LoraOptions& lora, bool checkpointing,
                              bool trainable = true) {
  auto d = Decoder::Create(spec, backend, TinyCapacity(checkpointing),
                           trainable, lora);
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return nullptr;
  (*d)->InitRandom(7, 0.3f);
  return *std::move(d);
}

// Nonzero adapters (PEFT's B = 0 would leave A's gradient zero).
void RandomAdapters(Decoder* d, uint64_t seed) {
  util::Rng rng(seed);
  std::vector<float> host(d->layout().total());
  for (float& x : host) x = static_cast<float>(0.3 * rng.Normal());
  d->backend()->CopyToDevice(d->params(), host.data(), host.size());
}

std::vector<float> Hidden(Decoder* d, const PackedBatch& batch) {
  const float* h = d->Forward(batch);
  return std::vector<float>(h, h + batch.rows() * d->hidden_size());
}

// L = sum(hidden * weights), in double.
double Loss(Decoder* d, const PackedBatch& batch,
            const std::vector<float>& weights) {
  const std::vector<float> h = Hidden(d, batch);
  double loss = 0;
  for (size_t i = 0; i < h.size(); ++i) loss += double{h[i]} * weights[i];
  return loss;
}

struct FdCase {
  Arch arch;
  std::vector<std::string> targets;
  bool rslora = false;
  float dropout = 0.0f;
  bool checkpointing = false;
};

class LoraGradientTest : public ::testing::TestWithParam<FdCase> {};

TEST_P(LoraGradientTest, EveryAdapterGradientMatchesFiniteDifferences) {
  const FdCase& c = GetParam();
  kernels::CpuBackend backend;
  const io::ModelSpec spec = TinySpec(c.arch);
  std::unique_ptr<Decoder> d =
      Make(&backend, spec, Lora(spec, c.targets, c.rslora, c.dropout),
           c.checkpointing);
  ASSERT_NE(d, nullptr);
  RandomAdapters(d.get(), 3);
  // The same mask for every forward below.
  d->set_lora_dropout_seed(99);
  const PackedBatch batch = Batch();
  const size_t rows = batch.rows() * d->hidden_size();
  std::vector<float> weights(rows);
  util::Rng rng(5);
  for (float& w : weights) w = static_cast<float>(rng.Normal());

  Hidden(d.get(), batch);
  std::memcpy(d->dhidden(), weights.data(), rows * sizeof(float));
  d->Backward(batch);
  const std::vector<float> grads(d->grads(), d->grads() + d->layout().total());

  float* params = d->params();
  const float eps = 2e-3f;
  double max_grad = 0;
  size_t checked = 0;
  for (const ParamTensor& t : d->layout().tensors()) {
    for (size_t i = t.offset; i < t.offset + t.numel; ++i) {
      const float saved = params[i];
      params[i] = saved + eps;
      const double up = Loss(d.get(), batch, weights);
      params[i] = saved - eps;
      const double down = Loss(d.get(), batch, weights);
      params[i] = saved;
      const double fd = (up - down) / (2.0 * eps);
      max_grad = std::max(max_grad, std::abs(fd));
      const double error = std::abs(fd - grads[i]);
      EXPECT_LE(error, 5e-3 + 1e-2 * std::abs(fd))
          << t.name << "[" << i - t.offset << "]: fd " << fd << " backward "
          << grads[i];
      ++checked;
    }
  }
  EXPECT_GT(max_grad, 0.1);
  EXPECT_GT(checked, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Families, LoraGradientTest,
    ::testing::Values(
        // GPT-2's Conv1D layers: c_attn spans q|k|v.
        FdCase{Arch::kGpt2, {"all-linear"}},
        // Every Llama projection: q, k, v in the fused q|k|v, gate and up in
        // the fused gate|up, o and down.
        FdCase{Arch::kLlama, {"all-linear"}},
        // Qwen2 (q/k/v biases), rsLoRA scaling.
        FdCase{Arch::kQwen2, {"k_proj", "up_proj", "o_proj"}, true},
        // A fixed dropout mask, stored and recomputed paths.
        FdCase{Arch::kLlama, {"q_proj", "v_proj", "down_proj"}, false, 0.3f},
        FdCase{Arch::kGpt2, {"c_attn", "mlp.c_proj"}, false, 0.3f, true}));

// The base weights with s B A added, in a decoder without adapters.
std::unique_ptr<Decoder> Merged(kernels::Backend* backend, Decoder& lora) {
  std::unique_ptr<Decoder> merged =
      Make(backend, lora.spec(), {}, false, /*trainable=*/false);
  std::vector<float> base(lora.base_layout().total());
  backend->CopyToHost(base.data(), lora.base_params(), base.size());
  const int r = lora.lora().r;
  const float s = lora.lora().scaling;
  for (const LoraAdapterRef& ref : lora.lora_adapters()) {
    const lora::LinearModule& m = ref.module;
    const std::string prefix = m.path.substr(0, m.path.rfind('.') + 1);
    // The fused tensor (or the module's own) and the first row of the module.
    std::string fused = m.path + ".weight";
    int64_t row = 0;
    const int64_t q = lora.spec().n_head * lora.spec().head_dim;
    const int64_t kv = lora.spec().n_kv_head * lora.spec().head_dim;
    switch (m.projection) {
      case lora::Projection::kQuery:
      case lora::Projection::kKey:
      case lora::Projection::kValue:
        fused = prefix + "qkv_proj.weight";
        row = m.projection == lora::Projection::kQuery ? 0
              : m.projection == lora::Projection::kKey ? q
                                                       : q + kv;
        break;
      case lora::Projection::kGate:
      case lora::Projection::kUp:
        fused = prefix + "gate_up_proj.weight";
        row = m.projection == lora::Projection::kUp ? lora.spec().intermediate
                                                    : 0;
        break;
      default:
        break;
    }
    const ParamTensor* t = lora.base_layout().Find(fused);
    EXPECT_NE(t, nullptr) << fused;
    if (t == nullptr) continue;
    const float* a = lora.params() + ref.a;
    const float* b = lora.params() + ref.b;
    for (int64_t i = 0; i < m.out_features; ++i) {
      for (int64_t j = 0; j < m.in_features; ++j) {
        double delta = 0;
        for (int k = 0; k < r; ++k) {
          delta += double{b[i * r + k]} * a[k * m.in_features + j];
        }
        base[t->offset + (row + i) * m.in_features + j] +=
            static_cast<float>(s * delta);
      }
    }
  }
  backend->CopyToDevice(merged->base_params(), base.data(), base.size());
  return merged;
}

TEST(LoraDecoderTest, ForwardEqualsTheMergedModel) {
  for (Arch arch : {Arch::kGpt2, Arch::kLlama, Arch::kQwen2}) {
    kernels::CpuBackend backend;
    const io::ModelSpec spec = TinySpec(arch);
    std::unique_ptr<Decoder> d =
        Make(&backend, spec, Lora(spec, {"all-linear"}), false);
    RandomAdapters(d.get(), 4);
    std::unique_ptr<Decoder> merged = Merged(&backend, *d);
    const PackedBatch batch = Batch();
    const std::vector<float> adapted = Hidden(d.get(), batch);
    const std::vector<float> expected = Hidden(merged.get(), batch);
    const std::vector<float> base = [&] {
      d->set_adapters_enabled(false);
      return Hidden(d.get(), batch);
    }();
    double max_error = 0, max_change = 0;
    for (size_t i = 0; i < adapted.size(); ++i) {
      max_error =
          std::max(max_error, double{std::abs(adapted[i] - expected[i])});
      max_change = std::max(max_change, double{std::abs(adapted[i] - base[i])});
    }
    EXPECT_LE(max_error, 1e-5) << static_cast<int>(arch);
    EXPECT_GT(max_change, 0.1) << static_cast<int>(arch);
  }
}

TEST(LoraDecoderTest, AdaptersOffIsTheBaseModelBitwise) {
  for (Arch arch : {Arch::kGpt2, Arch::kLlama}) {
    kernels::CpuBackend backend;
    const io::ModelSpec spec = TinySpec(arch);
    std::unique_ptr<Decoder> d =
        Make(&backend, spec, Lora(spec, {"all-linear"}, false, 0.2f), false);
    RandomAdapters(d.get(), 4);
    d->set_lora_dropout_seed(1);
    std::unique_ptr<Decoder> base = Make(&backend, spec, {}, false, false);
    const PackedBatch batch = Batch();
    d->set_adapters_enabled(false);
    const std::vector<float> off = Hidden(d.get(), batch);
    const std::vector<float> expected = Hidden(base.get(), batch);
    ASSERT_EQ(off.size(), expected.size());
    EXPECT_EQ(
        std::memcmp(off.data(), expected.data(), off.size() * sizeof(float)),
        0);
    // On again: adapted.
    d->set_adapters_enabled(true);
    EXPECT_NE(Hidden(d.get(), batch), expected);
  }
}

TEST(LoraDecoderTest, CheckpointingRerunsTheAdaptersBitwise) {
  for (float dropout : {0.0f, 0.25f}) {
    std::vector<float> grads[2];
    for (bool checkpointing : {false, true}) {
      kernels::CpuBackend backend;
      const io::ModelSpec spec = TinySpec(Arch::kLlama);
      std::unique_ptr<Decoder> d =
          Make(&backend, spec, Lora(spec, {"all-linear"}, false, dropout),
               checkpointing);
      RandomAdapters(d.get(), 4);
      util::Rng rng(8);
      for (int round = 0; round < 2; ++round) {
        d->set_lora_dropout_seed(round + 10);
        const PackedBatch batch = Batch();
        Hidden(d.get(), batch);
        for (int i = 0; i < batch.rows() * d->hidden_size(); ++i) {
          d->dhidden()[i] = static_cast<float>(rng.Normal());
        }
        d->Backward(batch);
      }
      grads[checkpointing].assign(d->grads(),
                                  d->grads() + d->padded_param_count());
    }
    ASSERT_EQ(grads[0].size(), grads[1].size());
    EXPECT_EQ(std::memcmp(grads[0].data(), grads[1].data(),
                          grads[0].size() * sizeof(float)),
              0)
        << "dropout " << dropout;
  }
}

TEST(LoraDecoderTest, DropoutMasksFollowTheSeed) {
  kernels::CpuBackend backend;
  const io::ModelSpec spec = TinySpec(Arch::kGpt2);
  std::unique_ptr<Decoder> d =
      Make(&backend, spec, Lora(spec, {"c_attn"}, false, 0.5f), false);
  RandomAdapters(d.get(), 4);
  const PackedBatch batch = Batch();
  const std::vector<float> none = Hidden(d.get(), batch);
  d->set_lora_dropout_seed(1);
  const std::vector<float> first = Hidden(d.get(), batch);
  const std::vector<float> again = Hidden(d.get(), batch);
  d->set_lora_dropout_seed(2);
  const std::vector<float> other = Hidden(d.get(), batch);
  d->set_lora_dropout_seed(std::nullopt);
  EXPECT_EQ(first, again);
  EXPECT_NE(first, other);
  EXPECT_NE(first, none);
  EXPECT_EQ(Hidden(d.get(), batch), none);
}

TEST(LoraDecoderTest, TrainableBufferIsTheAdaptersBlockByBlock) {
  kernels::CpuBackend backend;
  const io::ModelSpec spec = TinySpec(Arch::kLlama);
  std::unique_ptr<Decoder> d =
      Make(&backend, spec, Lora(spec, {"q_proj", "v_proj"}), false);
  const ParamLayout& layout = d->layout();
  ASSERT_EQ(layout.tensors().size(), 12u);  // 3 blocks x 2 modules x A, B
  EXPECT_EQ(layout.tensors()[0].name,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(layout.tensors()[3].shape, (std::vector<int64_t>{8, 2}));
  // r * (in + out) = 2 * (16 + 16) + 2 * (16 + 8) per block.
  size_t numel = 0;
  for (const ParamTensor& t : layout.tensors()) numel += t.numel;
  EXPECT_EQ(numel, 3u * (64 + 48));
  EXPECT_EQ(d->padded_param_count() % 32, 0u);
  EXPECT_GE(d->padded_param_count(), layout.total());
  for (int l = 0; l < spec.n_layer; ++l) {
    const ParamRange range = d->layer_range(l);
    EXPECT_EQ(range.begin, layout.tensors()[4 * l].offset);
    const ParamTensor& last = layout.tensors()[4 * l + 3];
    EXPECT_EQ(range.end, last.offset + last.numel);
  }
  EXPECT_EQ(d->output_embedding_grad(), nullptr);
  EXPECT_EQ(d->base_layout().Find("model.embed_tokens.weight")->offset, 0u);
  // PEFT's initialization: A within 1/sqrt(in), B zero.
  d->InitAdapters(3);
  const float bound = 1.0f / std::sqrt(16.0f);
  const ParamTensor& a = layout.tensors()[0];
  const ParamTensor& b = layout.tensors()[1];
  float max_a = 0;
  for (size_t i = 0; i < a.numel; ++i) {
    max_a = std::max(max_a, std::abs(d->params()[a.offset + i]));
  }
  EXPECT_LE(max_a, bound);
  EXPECT_GT(max_a, 0.5f * bound);
  for (size_t i = 0; i < b.numel; ++i) EXPECT_EQ(d->params()[b.offset + i], 0);
}

TEST(LoraDecoderTest, RefusesBadOptions) {
  kernels::CpuBackend backend;
  const io::ModelSpec spec = TinySpec(Arch::kGpt2);
  LoraOptions o = Lora(spec, {"c_attn"});
  EXPECT_FALSE(Decoder::Create(spec, &backend, TinyCapacity(), false, o).ok());
  o.r = 0;
  EXPECT_FALSE(Decoder::Create(spec, &backend, TinyCapacity(), true, o).ok());
  o.r = 2;
  o.dropout = 1.0f;
  EXPECT_FALSE(Decoder::Create(spec, &backend, TinyCapacity(), true, o).ok());
}

}  // namespace
}  // namespace prefopt::model
