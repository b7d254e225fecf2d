#include "trainer/model/decoder.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "trainer/util/rng.h"

namespace prefopt::model {

using kernels::Backend;

void PackedBatch::Clear() {
  tokens.clear();
  positions.clear();
  spans.clear();
}

void PackedBatch::AddSequence(absl::Span<const int32_t> first,
                              absl::Span<const int32_t> second) {
  const int start = rows();
  const int len = static_cast<int>(first.size() + second.size());
  tokens.insert(tokens.end(), first.begin(), first.end());
  tokens.insert(tokens.end(), second.begin(), second.end());
  for (int i = 0; i < len; ++i) positions.push_back(i);
  spans.push_back({start, len});
}

// Offsets (into the parameter buffer) of one transformer block's tensors.
struct Decoder::LayerOffsets {
  size_t ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b;
  size_t ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
};

// One block's saved forward activations (backend memory).
struct Decoder::LayerActs {
  float* ln1;
  float* ln1_mean;
  float* ln1_rstd;
  float* qkv;
  float* att;
  float* probs;
  float* res2;  // residual stream after the attention block
  float* ln2;
  float* ln2_mean;
  float* ln2_rstd;
  float* fc;
  float* gelu;
  float* res3;  // residual stream after the MLP block = the block's output
};

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(
    const io::ModelSpec& spec, Backend* backend, const Capacity& capacity,
    bool trainable) {
  if (spec.arch != io::ModelSpec::Arch::kGpt2) {
    return absl::UnimplementedError(
        "only the GPT-2 architecture is implemented so far");
  }
  if (capacity.max_rows <= 0 || capacity.max_seq_len <= 0) {
    return absl::InvalidArgumentError("decoder capacity must be positive");
  }
  if (capacity.max_seq_len > spec.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences of up to ", capacity.max_seq_len,
        " tokens were requested but the model has only ", spec.max_positions,
        " positions (n_positions); lower data.max_length"));
  }
  std::unique_ptr<Decoder> d(new Decoder(spec, backend, capacity, trainable));
  d->BuildLayout();
  d->AllocateActivations();
  return d;
}

Decoder::Decoder(const io::ModelSpec& spec, Backend* backend,
                 const Capacity& capacity, bool trainable)
    : spec_(spec),
      backend_(backend),
      capacity_(capacity),
      trainable_(trainable) {}

Decoder::~Decoder() {
  for (float* p : owned_) backend_->Free(p);
}

void Decoder::BuildLayout() {
  const int64_t C = spec_.hidden;
  const int64_t V = spec_.vocab_size;
  const int64_t FF = spec_.intermediate;
  const float proj_scale = 1.0f / std::sqrt(2.0f * spec_.n_layer);
  auto add = [&](std::string name, std::vector<int64_t> shape, Init init,
                 bool transposed, bool norm_or_bias, float scale = 1.0f) {
    ParamTensor t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.init = init;
    t.hf_transposed = transposed;
    t.is_norm_or_bias = norm_or_bias;
    t.init_scale = scale;
    return layout_.Add(std::move(t));
  };
  wte_offset_ =
      add("transformer.wte.weight", {V, C}, Init::kNormal, false, false);
  wpe_offset_ = add("transformer.wpe.weight", {spec_.max_positions, C},
                    Init::kNormal, false, false);
  for (int l = 0; l < spec_.n_layer; ++l) {
    const std::string p = absl::StrCat("transformer.h.", l, ".");
    LayerOffsets o;
    o.ln1_w = add(p + "ln_1.weight", {C}, Init::kOnes, false, true);
    o.ln1_b = add(p + "ln_1.bias", {C}, Init::kZeros, false, true);
    o.qkv_w =
        add(p + "attn.c_attn.weight", {3 * C, C}, Init::kNormal, true, false);
    o.qkv_b = add(p + "attn.c_attn.bias", {3 * C}, Init::kZeros, false, true);
    o.proj_w = add(p + "attn.c_proj.weight", {C, C}, Init::kNormal, true, false,
                   proj_scale);
    o.proj_b = add(p + "attn.c_proj.bias", {C}, Init::kZeros, false, true);
    o.ln2_w = add(p + "ln_2.weight", {C}, Init::kOnes, false, true);
    o.ln2_b = add(p + "ln_2.bias", {C}, Init::kZeros, false, true);
    o.fc_w = add(p + "mlp.c_fc.weight", {FF, C}, Init::kNormal, true, false);
    o.fc_b = add(p + "mlp.c_fc.bias", {FF}, Init::kZeros, false, true);
    o.fcproj_w = add(p + "mlp.c_proj.weight", {C, FF}, Init::kNormal, true,
                     false, proj_scale);
    o.fcproj_b = add(p + "mlp.c_proj.bias", {C}, Init::kZeros, false, true);
    layer_offsets_.push_back(o);
  }
  lnf_w_ = add("transformer.ln_f.weight", {C}, Init::kOnes, false, true);
  lnf_b_ = add("transformer.ln_f.bias", {C}, Init::kZeros, false, true);
  wout_offset_ = wte_offset_;  // GPT-2 ties the output embedding
  if (!spec_.tie_word_embeddings) {
    wout_offset_ = add("lm_head.weight", {V, C}, Init::kNormal, false, false);
  }

  params_ = backend_->Alloc(layout_.total());
  owned_.push_back(params_);
  backend_->Zero(params_, layout_.total());
  if (trainable_) {
    grads_ = backend_->Alloc(layout_.total());
    owned_.push_back(grads_);
    backend_->Zero(grads_, layout_.total());
  }
}

void Decoder::AllocateActivations() {
  const size_t N = capacity_.max_rows;
  const size_t C = spec_.hidden;
  const size_t FF = spec_.intermediate;
  const size_t QKV =
      static_cast<size_t>(spec_.n_head + 2 * spec_.n_kv_head) * spec_.head_dim;
  // Σ_s NH·len_s² ≤ NH·max_seq_len·Σ_s len_s = NH·max_seq_len·max_rows.
  const size_t probs = static_cast<size_t>(spec_.n_head) *
                       capacity_.max_seq_len * capacity_.max_rows;
  auto alloc = [&](size_t n) {
    float* p = backend_->Alloc(n);
    owned_.push_back(p);
    return p;
  };
  encoded_ = alloc(N * C);
  lnf_ = alloc(N * C);
  lnf_mean_ = alloc(N);
  lnf_rstd_ = alloc(N);
  // A frozen model needs no saved activations: one block's buffers are reused
  // by every block.
  const int stored = trainable_ ? spec_.n_layer : 1;
  for (int l = 0; l < stored; ++l) {
    LayerActs a;
    a.ln1 = alloc(N * C);
    a.ln1_mean = alloc(N);
    a.ln1_rstd = alloc(N);
    a.qkv = alloc(N * QKV);
    a.att = alloc(N * C);
    a.probs = alloc(probs);
    a.res2 = alloc(N * C);
    a.ln2 = alloc(N * C);
    a.ln2_mean = alloc(N);
    a.ln2_rstd = alloc(N);
    a.fc = alloc(N * FF);
    a.gelu = alloc(N * FF);
    a.res3 = alloc(N * C);
    acts_.push_back(a);
  }
  branch_out_ = alloc(N * C);
  if (trainable_) {
    dhidden_ = alloc(N * C);
    dresidual_ = alloc(N * C);
    dscratch_c_ = alloc(N * C);
    dscratch_c2_ = alloc(N * C);
    dscratch_qkv_ = alloc(N * QKV);
    dscratch_ff_ = alloc(N * FF);
    dscratch_ff2_ = alloc(N * FF);
  }
}

absl::Status Decoder::LoadHf(const io::WeightStore& store) {
  std::vector<float> host;
  std::vector<float> transposed;
  for (const ParamTensor& t : layout_.tensors()) {
    if (t.name == "lm_head.weight" && !store.Has(t.name)) {
      return absl::NotFoundError(
          absl::StrCat("lm_head.weight is missing but config.json says "
                       "tie_word_embeddings is false"));
    }
    host.resize(t.numel);
    const std::vector<int64_t> hf_shape = t.HfShape();
    absl::Status s = store.ReadFloat(t.name, hf_shape, host.data());
    if (!s.ok()) return s;
    if (t.hf_transposed) {
      const int64_t rows = hf_shape[0], cols = hf_shape[1];
      transposed.resize(t.numel);
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          transposed[j * rows + i] = host[i * cols + j];
        }
      }
      backend_->CopyToDevice(params_ + t.offset, transposed.data(), t.numel);
    } else {
      backend_->CopyToDevice(params_ + t.offset, host.data(), t.numel);
    }
  }
  return absl::OkStatus();
}

void Decoder::InitRandom(uint64_t seed, float init_std) {
  util::Rng rng(seed);
  std::vector<float> host;
  for (const ParamTensor& t : layout_.tensors()) {
    host.assign(t.numel, 0.0f);
    switch (t.init) {
      case Init::kOnes:
        host.assign(t.numel, 1.0f);
        break;
      case Init::kZeros:
        break;
      case Init::kNormal:
        for (float& x : host) {
          x = static_cast<float>(rng.Normal() * init_std * t.init_scale);
        }
        break;
    }
    backend_->CopyToDevice(params_ + t.offset, host.data(), t.numel);
  }
}

const float* Decoder::Forward(const PackedBatch& batch) {
  Backend& b = *backend_;
  const int N = batch.rows();
  const int C = spec_.hidden;
  const int FF = spec_.intermediate;
  const int NH = spec_.n_head, NKV = spec_.n_kv_head, hs = spec_.head_dim;
  const int QKV = (NH + 2 * NKV) * hs;
  const int S = static_cast<int>(batch.spans.size());
  const float eps = spec_.norm_eps;

  b.EmbeddingForward(encoded_, batch.tokens.data(), batch.positions.data(),
                     P(wte_offset_), P(wpe_offset_), N, C);
  const float* residual = encoded_;
  for (int l = 0; l < spec_.n_layer; ++l) {
    const LayerOffsets& o = layer_offsets_[l];
    LayerActs& a = acts_[trainable_ ? l : 0];
    b.LayerNormForward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, P(o.ln1_w),
                       P(o.ln1_b), N, C, eps);
    b.MatmulForward(a.qkv, a.ln1, P(o.qkv_w), P(o.qkv_b), N, C, QKV);
    b.AttentionForward(a.att, a.probs, a.qkv, batch.spans.data(), S, NH, NKV,
                       hs);
    b.MatmulForward(branch_out_, a.att, P(o.proj_w), P(o.proj_b), N, C, C);
    b.Add(a.res2, residual, branch_out_, static_cast<size_t>(N) * C);
    b.LayerNormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, P(o.ln2_w),
                       P(o.ln2_b), N, C, eps);
    b.MatmulForward(a.fc, a.ln2, P(o.fc_w), P(o.fc_b), N, C, FF);
    b.GeluForward(a.gelu, a.fc, static_cast<size_t>(N) * FF);
    b.MatmulForward(branch_out_, a.gelu, P(o.fcproj_w), P(o.fcproj_b), N, FF,
                    C);
    b.Add(a.res3, a.res2, branch_out_, static_cast<size_t>(N) * C);
    residual = a.res3;
  }
  b.LayerNormForward(lnf_, lnf_mean_, lnf_rstd_, residual, P(lnf_w_), P(lnf_b_),
                     N, C, eps);
  return lnf_;
}

void Decoder::Backward(const PackedBatch& batch) {
  Backend& b = *backend_;
  const int N = batch.rows();
  const size_t n = static_cast<size_t>(N);
  const int C = spec_.hidden;
  const int FF = spec_.intermediate;
  const int NH = spec_.n_head, NKV = spec_.n_kv_head, hs = spec_.head_dim;
  const int QKV = (NH + 2 * NKV) * hs;
  const int S = static_cast<int>(batch.spans.size());
  const int L = spec_.n_layer;

  b.Zero(dresidual_, n * C);
  b.LayerNormBackward(dresidual_, G(lnf_w_), G(lnf_b_), dhidden_,
                      acts_[L - 1].res3, P(lnf_w_), lnf_mean_, lnf_rstd_, N, C);
  // dresidual_ holds the gradient w.r.t. the residual stream; each block's
  // normalization backward accumulates its branch into it (the residual adds
  // pass the gradient through unchanged).
  for (int l = L - 1; l >= 0; --l) {
    const LayerOffsets& o = layer_offsets_[l];
    const LayerActs& a = acts_[l];
    const float* residual_in = l == 0 ? encoded_ : acts_[l - 1].res3;
    // MLP block.
    b.Zero(dscratch_ff_, n * FF);
    b.MatmulBackward(dscratch_ff_, G(o.fcproj_w), G(o.fcproj_b), dresidual_,
                     a.gelu, P(o.fcproj_w), N, FF, C);
    b.Zero(dscratch_ff2_, n * FF);
    b.GeluBackward(dscratch_ff2_, a.fc, dscratch_ff_, n * FF);
    b.Zero(dscratch_c_, n * C);
    b.MatmulBackward(dscratch_c_, G(o.fc_w), G(o.fc_b), dscratch_ff2_, a.ln2,
                     P(o.fc_w), N, C, FF);
    b.LayerNormBackward(dresidual_, G(o.ln2_w), G(o.ln2_b), dscratch_c_, a.res2,
                        P(o.ln2_w), a.ln2_mean, a.ln2_rstd, N, C);
    // Attention block.
    b.Zero(dscratch_c2_, n * C);
    b.MatmulBackward(dscratch_c2_, G(o.proj_w), G(o.proj_b), dresidual_, a.att,
                     P(o.proj_w), N, C, C);
    b.Zero(dscratch_qkv_, n * QKV);
    b.AttentionBackward(dscratch_qkv_, dscratch_c2_, a.qkv, a.probs,
                        batch.spans.data(), S, NH, NKV, hs);
    b.Zero(dscratch_c_, n * C);
    b.MatmulBackward(dscratch_c_, G(o.qkv_w), G(o.qkv_b), dscratch_qkv_, a.ln1,
                     P(o.qkv_w), N, C, QKV);
    b.LayerNormBackward(dresidual_, G(o.ln1_w), G(o.ln1_b), dscratch_c_,
                        residual_in, P(o.ln1_w), a.ln1_mean, a.ln1_rstd, N, C);
  }
  b.EmbeddingBackward(G(wte_offset_), G(wpe_offset_), dresidual_,
                      batch.tokens.data(), batch.positions.data(), N, C);
}

}  // namespace prefopt::model
