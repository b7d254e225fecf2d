// The activation observer sees every tensor of a Forward pass in order, with
// the right shapes and contents: each view is recomputed here from its
// neighbours with the backend's own ops (so the comparisons are bitwise), a
// frozen decoder (which reuses one layer's buffers) reports the same values
// as a trainable one, and observing leaves Forward's result unchanged.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/model/decoder.h"
#include "trainer/model/rope.h"

namespace prefopt::model {
namespace {

// A view copied out of the decoder (rows compacted to `width` floats).
struct Recorded {
  Activation kind;
  int layer;
  int width;
  int stride;
  std::vector<float> values;
};

class Recorder : public ActivationObserver {
 public:
  void Observe(const ActivationView& v) override {
    Recorded r{v.kind, v.layer, v.width, v.stride, {}};
    for (int t = 0; t < v.rows; ++t) {
      const float* row = v.data + static_cast<size_t>(t) * v.stride;
      r.values.insert(r.values.end(), row, row + v.width);
    }
    seen.push_back(std::move(r));
  }
  std::vector<Recorded> seen;
};

io::ModelSpec TinySpec(bool llama) {
  io::ModelSpec s;
  s.arch = llama ? io::ModelSpec::Arch::kLlama : io::ModelSpec::Arch::kGpt2;
  s.vocab_size = 23;
  s.max_positions = 16;
  s.hidden = 16;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = llama ? 2 : 4;
  s.head_dim = 4;
  s.intermediate = llama ? 24 : 64;
  s.activation = llama ? "silu" : "gelu_new";
  s.attention_bias = !llama;
  s.attention_out_bias = !llama;
  s.mlp_bias = !llama;
  return s;
}

PackedBatch TwoSequences() {
  PackedBatch b;
  b.AddSequence({1, 5, 7, 2}, {9, 3, 4});
  b.AddSequence({8, 6}, {11, 12, 13, 14, 22});
  return b;
}

std::vector<float> ForwardWith(Decoder& d, const PackedBatch& batch,
                               ActivationObserver* observer) {
  d.set_observer(observer);
  const float* out = d.Forward(batch);
  std::vector<float> result(out, out + batch.rows() * d.hidden_size());
  d.set_observer(nullptr);
  return result;
}

class DecoderObserver : public ::testing::TestWithParam<bool> {};

TEST_P(DecoderObserver, ViewsAreTheForwardPassTensors) {
  const bool llama = GetParam();
  const io::ModelSpec spec = TinySpec(llama);
  kernels::CpuBackend backend;
  const PackedBatch batch = TwoSequences();
  const int N = batch.rows();
  const int C = spec.hidden, hs = spec.head_dim;
  const int NH = spec.n_head, NKV = spec.n_kv_head;
  const int QKV = (NH + 2 * NKV) * hs;
  const int FF = spec.intermediate;
  const Capacity cap{N, 7, 2};
  auto trainable = Decoder::Create(spec, &backend, cap, true);
  auto frozen = Decoder::Create(spec, &backend, cap, false);
  ASSERT_TRUE(trainable.ok() && frozen.ok());
  (*trainable)->InitRandom(5, 0.3f);
  std::memcpy((*frozen)->params(), (*trainable)->params(),
              (*trainable)->layout().total() * sizeof(float));

  const std::vector<float> plain = ForwardWith(**trainable, batch, nullptr);
  Recorder rec, frozen_rec;
  EXPECT_EQ(ForwardWith(**trainable, batch, &rec), plain);
  EXPECT_EQ(ForwardWith(**frozen, batch, &frozen_rec), plain);

  // Order, layers and shapes.
  std::vector<Activation> per_layer = {Activation::kAttentionNorm,
                                       Activation::kQuery, Activation::kKey,
                                       Activation::kValue};
  if (llama) {
    per_layer.push_back(Activation::kQueryRotary);
    per_layer.push_back(Activation::kKeyRotary);
  }
  for (Activation a :
       {Activation::kAttentionValues, Activation::kAttentionOutput,
        Activation::kResidAfterAttention, Activation::kMlpNorm,
        Activation::kMlpActivation, Activation::kMlpOutput,
        Activation::kResidAfterMlp}) {
    per_layer.push_back(a);
  }
  const int K = static_cast<int>(per_layer.size());
  const int rot = llama ? 2 : 0;  // the rotated q and k
  ASSERT_EQ(rec.seen.size(), 2u + K * spec.n_layer);
  EXPECT_EQ(rec.seen.front().kind, Activation::kEmbedding);
  EXPECT_EQ(rec.seen.back().kind, Activation::kFinalNorm);
  for (int l = 0; l < spec.n_layer; ++l) {
    for (int i = 0; i < K; ++i) {
      const Recorded& r = rec.seen[1 + K * l + i];
      EXPECT_EQ(r.kind, per_layer[i]);
      EXPECT_EQ(r.layer, l);
    }
    const Recorded* v = &rec.seen[1 + K * l];
    EXPECT_EQ(v[1].width, NH * hs);
    EXPECT_EQ(v[2].width, NKV * hs);
    EXPECT_EQ(v[3].stride, QKV);
    EXPECT_EQ(v[4 + rot].width, NH * hs);
    EXPECT_EQ(v[8 + rot].width, FF);
  }
  EXPECT_EQ(rec.seen.back().values, plain);
  // The frozen decoder reports each tensor before reusing its buffer.
  ASSERT_EQ(frozen_rec.seen.size(), rec.seen.size());
  for (size_t i = 0; i < rec.seen.size(); ++i) {
    EXPECT_EQ(frozen_rec.seen[i].values, rec.seen[i].values) << "view " << i;
  }

  // Each view from the previous ones, with the decoder's parameters.
  Decoder& d = **trainable;
  auto param = [&](const std::string& name) -> const float* {
    const ParamTensor* t = d.layout().Find(name);
    return t == nullptr ? nullptr : d.params() + t->offset;
  };
  std::vector<float> cos, sin;
  RopeTables(spec, cap.max_seq_len, &cos, &sin);
  std::vector<float> norm(N * C), mean(N), rstd(N), qkv(N * QKV),
      fc(N * 2 * FF), act(N * FF), branch(N * C), sum(N * C);
  auto normalize = [&](const std::vector<float>& x, const std::string& w,
                       const std::string& b) {
    if (llama) {
      backend.RmsNormForward(norm.data(), rstd.data(), x.data(), param(w), N, C,
                             spec.norm_eps);
    } else {
      backend.LayerNormForward(norm.data(), mean.data(), rstd.data(), x.data(),
                               param(w), param(b), N, C, spec.norm_eps);
    }
  };
  std::vector<float> residual = rec.seen[0].values;
  for (int l = 0; l < spec.n_layer; ++l) {
    const std::string p = llama ? absl::StrCat("model.layers.", l, ".")
                                : absl::StrCat("transformer.h.", l, ".");
    const Recorded* v = &rec.seen[1 + K * l];
    normalize(residual, p + (llama ? "input_layernorm.weight" : "ln_1.weight"),
              p + "ln_1.bias");
    EXPECT_EQ(norm, v[0].values) << "attention norm, layer " << l;
    backend.MatmulForward(
        qkv.data(), norm.data(),
        param(p + (llama ? "self_attn.qkv_proj.weight" : "attn.c_attn.weight")),
        param(p + "attn.c_attn.bias"), N, C, QKV);
    auto joined = [&](const Recorded* q) {
      std::vector<float> out;
      for (int t = 0; t < N; ++t) {
        for (int part = 0; part < 3; ++part) {
          const std::vector<float>& x = q[part].values;
          const int w = q[part].width;
          out.insert(out.end(), x.begin() + t * w, x.begin() + (t + 1) * w);
        }
      }
      return out;
    };
    EXPECT_EQ(joined(v + 1), qkv) << "q|k|v of layer " << l;
    if (llama) {
      backend.RopeForward(qkv.data(), batch.positions.data(), cos.data(),
                          sin.data(), N, NH, NKV, hs);
      // The rotated q and k, then the (unrotated) v.
      const Recorded rotated[3] = {v[4], v[5], v[3]};
      EXPECT_EQ(joined(rotated), qkv) << "rotated q|k of layer " << l;
    }
    backend.MatmulForward(
        branch.data(), v[4 + rot].values.data(),
        param(p + (llama ? "self_attn.o_proj.weight" : "attn.c_proj.weight")),
        param(p + "attn.c_proj.bias"), N, NH * hs, C);
    EXPECT_EQ(branch, v[5 + rot].values) << "attention output, layer " << l;
    backend.Add(sum.data(), residual.data(), v[5 + rot].values.data(), N * C);
    EXPECT_EQ(sum, v[6 + rot].values)
        << "residual after attention, layer " << l;
    normalize(v[6 + rot].values,
              p + (llama ? "post_attention_layernorm.weight" : "ln_2.weight"),
              p + "ln_2.bias");
    EXPECT_EQ(norm, v[7 + rot].values) << "MLP norm, layer " << l;
    const int fc_width = llama ? 2 * FF : FF;
    backend.MatmulForward(
        fc.data(), norm.data(),
        param(p + (llama ? "mlp.gate_up_proj.weight" : "mlp.c_fc.weight")),
        param(p + "mlp.c_fc.bias"), N, C, fc_width);
    if (llama) {
      backend.SwiGluForward(act.data(), fc.data(), N, FF);
    } else {
      backend.GeluForward(act.data(), fc.data(), N * FF);
    }
    EXPECT_EQ(act, v[8 + rot].values) << "MLP activation, layer " << l;
    backend.MatmulForward(
        branch.data(), act.data(),
        param(p + (llama ? "mlp.down_proj.weight" : "mlp.c_proj.weight")),
        param(p + "mlp.c_proj.bias"), N, FF, C);
    EXPECT_EQ(branch, v[9 + rot].values) << "MLP output, layer " << l;
    backend.Add(sum.data(), v[6 + rot].values.data(), branch.data(), N * C);
    EXPECT_EQ(sum, v[10 + rot].values) << "residual after MLP, layer " << l;
    residual = v[10 + rot].values;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpt2AndLlama, DecoderObserver,
                         ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "llama" : "gpt2");
                         });

}  // namespace
}  // namespace prefopt::model
