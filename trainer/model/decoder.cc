#include "trainer/model/decoder.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/memory_purpose.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/rope.h"
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

// Offsets (into the parameter buffer) of one transformer block's tensors;
// kAbsent for a bias the architecture does not have.
struct Decoder::LayerOffsets {
  size_t ln1_w, ln1_b;        // input norm (GPT-2 ln_1)
  size_t qkv_w, qkv_b;        // fused q|k|v projection (GPT-2 c_attn)
  size_t proj_w, proj_b;      // attention output (GPT-2 c_proj, o_proj)
  size_t ln2_w, ln2_b;        // post-attention norm (GPT-2 ln_2)
  size_t fc_w, fc_b;          // MLP input (GPT-2 c_fc, fused gate|up)
  size_t fcproj_w, fcproj_b;  // MLP output (GPT-2 mlp.c_proj, down_proj)
};

// One block's saved forward activations (backend memory).
struct Decoder::LayerActs {
  float* ln1;
  float* ln1_mean;  // LayerNorm only
  float* ln1_rstd;
  float* qkv;  // after RoPE (Llama/Qwen2)
  float* att;
  float* probs;
  float* res2;  // residual stream after the attention block
  float* ln2;
  float* ln2_mean;  // LayerNorm only
  float* ln2_rstd;
  float* fc;  // MLP input projection: [N, FF] (GPT-2) or [N, 2*FF] gate|up
  // GELU(fc) or SwiGLU(fc), [N, FF]: one buffer every block shares, as
  // Backward recomputes it from fc (MlpActivation).
  float* act;
  float* res3;  // residual stream after the MLP block = the block's output
};

// One adapted linear layer of a block.
struct Decoder::Adapter {
  lora::LinearModule module;
  Slot slot = Slot::kQkv;
  size_t a = 0, b = 0;  // offsets of lora_A and lora_B in params_
  // The adapter adds into columns [column, column + out_features) of its
  // slot's output, `width` columns wide: q, k, v, gate and up are parts of
  // prefopt's fused projections.
  int column = 0;
  int width = 0;
  // The mask's seed stream inside its block.
  int index = 0;
  float* scaled_h = nullptr;  // [max_rows, r]: scaling * A drop(x)
  float* mask = nullptr;      // [max_rows, in]: the dropout mask (dropout > 0)
  // The mask as drawn on the host, kept so that a step allocates nothing.
  std::vector<float> host_mask;
  // A fused part's B widened to the slot: [width, r] with B in rows
  // [column, column + out_features) and zeros elsewhere, so that the
  // existing dense kernels add into the fused output.
  float* b_wide = nullptr;
};

namespace {

// A count that saturates at UINT64_MAX instead of wrapping: a saturated total
// is above any machine's memory, which is all the memory check needs.
class Count {
 public:
  explicit Count(int64_t n) : n_(n > 0 ? static_cast<uint64_t>(n) : 0) {}
  Count operator+(Count other) const {
    uint64_t sum;
    return FromRaw(__builtin_add_overflow(n_, other.n_, &sum) ? kMax : sum);
  }
  Count operator*(Count other) const {
    uint64_t product;
    return FromRaw(__builtin_mul_overflow(n_, other.n_, &product) ? kMax
                                                                  : product);
  }
  // Rounded up.
  Count Half() const { return FromRaw(n_ / 2 + n_ % 2); }
  uint64_t value() const { return n_; }

 private:
  static constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  static Count FromRaw(uint64_t n) {
    Count c(0);
    c.n_ = n;
    return c;
  }
  uint64_t n_;
};

// The floats BuildLayout lays out for `spec`, each tensor rounded up to the
// layout's 16-float alignment (one 16 per tensor bounds the rounding). With
// `bf16_weights` (LoraOptions::base_bf16) the blocks' linear weights count
// half, plus one block's of them in fp32.
Count ParameterCount(const io::ModelSpec& spec, bool bf16_weights) {
  const Count C(spec.hidden), V(spec.vocab_size), FF(spec.intermediate),
      L(spec.n_layer), pad(16);
  const Count q_rows = Count(spec.n_head) * Count(spec.head_dim);
  const Count qkv_rows =
      q_rows + Count(2) * Count(spec.n_kv_head) * Count(spec.head_dim);
  const bool gpt2 = spec.arch == io::ModelSpec::Arch::kGpt2;
  const Count weights =
      qkv_rows * C + q_rows * C + Count(gpt2 ? 2 : 3) * FF * C + Count(4) * pad;
  Count layer = Count(8) * pad;
  Count total = V * C + Count(4) * pad;
  if (gpt2) {
    layer = layer + qkv_rows + FF + Count(6) * C;
    total = total + Count(spec.max_positions) * C + Count(2) * C;
  } else {
    layer = layer + Count(2) * C;
    if (spec.attention_bias) layer = layer + qkv_rows;
    if (spec.attention_out_bias) layer = layer + C;
    if (spec.mlp_bias) layer = layer + Count(2) * FF + C;
    total = total + C;
  }
  total = total + L * layer +
          (bf16_weights ? (L * weights).Half() + weights : L * weights);
  if (!spec.tie_word_embeddings) total = total + V * C;
  return total;
}

// The floats AllocateActivations allocates (rope tables bounded by
// max_seq_len * head_dim each), `attention` of them per block for what
// attention saves for its backward.
Count ActivationCount(const io::ModelSpec& spec, const Capacity& capacity,
                      bool trainable, Count attention) {
  const bool llama = spec.arch != io::ModelSpec::Arch::kGpt2;
  const Count N(capacity.max_rows), S(capacity.max_seq_len), C(spec.hidden),
      FF(spec.intermediate), hd(spec.head_dim);
  const Count ATT = Count(spec.n_head) * hd;
  const Count QKV = ATT + Count(2) * Count(spec.n_kv_head) * hd;
  const Count FC = llama ? Count(2) * FF : FF;
  // The MLP activation (N * FF) is one buffer every block shares.
  const Count layer =
      Count(4) * N * C + Count(4) * N + N * QKV + N * ATT + attention + N * FC;
  // Frozen: one block's buffers reused by every block. Checkpointed: those
  // plus every other block's output.
  const Count blocks =
      trainable && !capacity.activation_checkpointing
          ? Count(spec.n_layer) * layer
          : layer + (trainable ? Count(spec.n_layer - 1) * N * C : Count(0));
  Count total =
      blocks + N * FF + Count(3) * N * C + Count(2) * N + Count(2) * S * hd;
  if (trainable) {
    total = total + Count(3) * N * C + N * ATT + N * QKV + N * FF + N * FC;
  }
  return total;
}

// Bytes of memory the kernel says can be allocated without swapping
// (MemAvailable), else the free physical pages, else nullopt.
std::optional<uint64_t> AvailableHostMemory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return std::nullopt;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

}  // namespace

absl::Status CheckModelFitsInMemory(const io::ModelSpec& spec,
                                    const Capacity& capacity, bool trainable,
                                    std::optional<uint64_t> available,
                                    const LoraOptions& lora,
                                    std::optional<uint64_t> attention_floats) {
  // Without the backend's count, the probabilities of the fullest batch.
  const Count attention =
      attention_floats.has_value()
          ? Count(static_cast<int64_t>(std::min<uint64_t>(
                *attention_floats, std::numeric_limits<int64_t>::max())))
          : Count(spec.n_head) * Count(capacity.max_seq_len) *
                Count(capacity.max_rows);
  const Count params = ParameterCount(spec, lora.enabled() && lora.base_bf16) +
                       Count(capacity.param_multiple);
  // Trainable: gradients and AdamW's two moments as well (a ZeRO-1 rank holds
  // only a shard of the moments; counting them whole errs on the safe side).
  // With LoRA only the adapters train; their activations are the saved
  // A x, the dropout masks and one adapter's scratch.
  Count floats =
      ActivationCount(spec, capacity, trainable, attention) +
      Count(static_cast<int64_t>(std::min<size_t>(
          capacity.objective_floats, std::numeric_limits<int64_t>::max())));
  if (lora.enabled()) {
    const Count N(capacity.max_rows), r(lora.r);
    Count adapters(0), widest(0);
    for (const lora::LinearModule& m : lora.modules) {
      adapters =
          adapters + r * Count(m.in_features + m.out_features) + Count(32);
      floats = floats + N * r +
               (lora.dropout > 0 ? N * Count(m.in_features) : Count(0));
      widest = Count(std::max<int64_t>({static_cast<int64_t>(widest.value()),
                                        m.in_features, m.out_features * 3}));
    }
    floats = floats + params + adapters * Count(4) + Count(3) * N * widest +
             widest * r;
  } else {
    floats = floats + params * Count(trainable ? 4 : 1);
  }
  const uint64_t needed = (floats * Count(sizeof(float))).value();
  if (!available.has_value() || needed <= *available) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the model (vocab_size ", spec.vocab_size, ", hidden size ", spec.hidden,
      ", ", spec.n_layer, " layers, intermediate size ", spec.intermediate,
      ", ", spec.n_head, " heads of ", spec.head_dim, ") needs ",
      needed == std::numeric_limits<uint64_t>::max()
          ? std::string("more than 2^64")
          : absl::StrCat(needed),
      " bytes for its parameters",
      trainable ? ", gradients, AdamW moments" : "", " and activations (",
      capacity.max_rows, " tokens of up to ", capacity.max_seq_len, ")",
      capacity.objective_floats > 0
          ? absl::StrCat(" with the output layer and objective (",
                         capacity.objective_floats * sizeof(float), " bytes)")
          : "",
      ", but ", *available,
      " bytes of memory are available; check the sizes in ",
      spec.config_path.empty() ? std::string("the model config")
                               : spec.config_path,
      capacity.objective_floats > 0
          ? ", batch.micro_batch_size, data.max_length and output_chunk_tokens"
          : ""));
}

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Create(
    const io::ModelSpec& spec, Backend* backend, const Capacity& capacity,
    bool trainable, const LoraOptions& lora) {
  if (capacity.max_rows <= 0 || capacity.max_seq_len <= 0) {
    return absl::InvalidArgumentError("decoder capacity must be positive");
  }
  if (lora.enabled() &&
      (!trainable || lora.r <= 0 || !(lora.dropout >= 0 && lora.dropout < 1))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoRA needs a trainable decoder, r > 0 and dropout in [0, 1) (got ",
        trainable ? "trainable" : "frozen", ", r ", lora.r, ", dropout ",
        lora.dropout, ")"));
  }
  const bool gpt2 = spec.arch == io::ModelSpec::Arch::kGpt2;
  if (capacity.max_seq_len > spec.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences of up to ", capacity.max_seq_len,
        " tokens were requested but the model has only ", spec.max_positions,
        " positions (", gpt2 ? "n_positions" : "max_position_embeddings",
        "); lower data.max_length"));
  }
  if (!gpt2 && spec.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim is ", spec.head_dim,
                     "; rotary embeddings need an even head_dim"));
  }
  // Before anything is allocated: sizes from a file must not end in
  // std::bad_alloc or the OOM killer. A GPU backend reports a failed
  // allocation itself, with the free device memory.
  if (backend->HostAddressable()) {
    if (absl::Status s = CheckModelFitsInMemory(
            spec, capacity, trainable, AvailableHostMemory(), lora,
            backend->MaxAttentionProbsSize(capacity.max_rows,
                                           capacity.max_seq_len, spec.n_head));
        !s.ok()) {
      return s;
    }
  }
  std::unique_ptr<Decoder> d(
      new Decoder(spec, backend, capacity, trainable, lora));
  d->BuildLayout();
  if (lora.enabled()) d->BuildAdapters();
  d->AllocateActivations();
  return d;
}

Decoder::Decoder(const io::ModelSpec& spec, Backend* backend,
                 const Capacity& capacity, bool trainable,
                 const LoraOptions& lora)
    : spec_(spec),
      backend_(backend),
      capacity_(capacity),
      trainable_(trainable),
      llama_family_(spec.arch != io::ModelSpec::Arch::kGpt2),
      lora_(lora) {}

Decoder::~Decoder() {
  for (float* p : owned_) backend_->Free(p);
}

void Decoder::BuildLayout() {
  const int64_t C = spec_.hidden;
  const int64_t V = spec_.vocab_size;
  const int64_t FF = spec_.intermediate;
  const int64_t hd = spec_.head_dim;
  const int64_t q_rows = spec_.n_head * hd, kv_rows = spec_.n_kv_head * hd;
  const int64_t qkv_rows = q_rows + 2 * kv_rows;
  auto add = [&](std::string name, std::vector<int64_t> shape, Init init,
                 bool transposed, bool norm_or_bias, float scale = 1.0f,
                 std::vector<HfPart> parts = {}) {
    ParamTensor t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.init = init;
    t.hf_transposed = transposed;
    t.hf_parts = std::move(parts);
    t.is_norm_or_bias = norm_or_bias;
    t.init_scale = scale;
    return layout_.Add(std::move(t));
  };

  if (!llama_family_) {
    const float proj_scale = 1.0f / std::sqrt(2.0f * spec_.n_layer);
    wte_offset_ =
        add("transformer.wte.weight", {V, C}, Init::kNormal, false, false);
    wpe_offset_ = add("transformer.wpe.weight", {spec_.max_positions, C},
                      Init::kNormal, false, false);
    for (int l = 0; l < spec_.n_layer; ++l) {
      const std::string p = absl::StrCat("transformer.h.", l, ".");
      LayerOffsets o;
      o.ln1_w = add(p + "ln_1.weight", {C}, Init::kOnes, false, true);
      o.ln1_b = add(p + "ln_1.bias", {C}, Init::kZeros, false, true);
      o.qkv_w = add(p + "attn.c_attn.weight", {qkv_rows, C}, Init::kNormal,
                    true, false);
      o.qkv_b =
          add(p + "attn.c_attn.bias", {qkv_rows}, Init::kZeros, false, true);
      o.proj_w = add(p + "attn.c_proj.weight", {C, q_rows}, Init::kNormal, true,
                     false, proj_scale);
      o.proj_b = add(p + "attn.c_proj.bias", {C}, Init::kZeros, false, true);
      o.ln2_w = add(p + "ln_2.weight", {C}, Init::kOnes, false, true);
      o.ln2_b = add(p + "ln_2.bias", {C}, Init::kZeros, false, true);
      o.fc_w = add(p + "mlp.c_fc.weight", {FF, C}, Init::kNormal, true, false);
      o.fc_b = add(p + "mlp.c_fc.bias", {FF}, Init::kZeros, false, true);
      o.fcproj_w = add(p + "mlp.c_proj.weight", {C, FF}, Init::kNormal, true,
                       false, proj_scale);
      o.fcproj_b = add(p + "mlp.c_proj.bias", {C}, Init::kZeros, false, true);
      layer_offsets_.push_back(o);
      layer_ranges_.push_back({o.ln1_w, layout_.total()});
    }
    lnf_w_ = add("transformer.ln_f.weight", {C}, Init::kOnes, false, true);
    lnf_b_ = add("transformer.ln_f.bias", {C}, Init::kZeros, false, true);
  } else {
    wte_offset_ =
        add("model.embed_tokens.weight", {V, C}, Init::kNormal, false, false);
    // The row ranges of the fused tensors' parts.
    auto qkv_parts = [&](const std::string& p, const std::string& suffix) {
      return std::vector<HfPart>{
          {p + "self_attn.q_proj." + suffix, 0, q_rows},
          {p + "self_attn.k_proj." + suffix, q_rows, kv_rows},
          {p + "self_attn.v_proj." + suffix, q_rows + kv_rows, kv_rows}};
    };
    auto gate_up_parts = [&](const std::string& p, const std::string& suffix) {
      return std::vector<HfPart>{{p + "mlp.gate_proj." + suffix, 0, FF},
                                 {p + "mlp.up_proj." + suffix, FF, FF}};
    };
    for (int l = 0; l < spec_.n_layer; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerOffsets o;
      o.ln1_w =
          add(p + "input_layernorm.weight", {C}, Init::kOnes, false, true);
      o.ln1_b = kAbsent;
      o.qkv_w = add(p + "self_attn.qkv_proj.weight", {qkv_rows, C},
                    Init::kNormal, false, false, 1.0f, qkv_parts(p, "weight"));
      o.qkv_b = spec_.attention_bias
                    ? add(p + "self_attn.qkv_proj.bias", {qkv_rows},
                          Init::kZeros, false, true, 1.0f, qkv_parts(p, "bias"))
                    : kAbsent;
      o.proj_w = add(p + "self_attn.o_proj.weight", {C, q_rows}, Init::kNormal,
                     false, false);
      o.proj_b = spec_.attention_out_bias ? add(p + "self_attn.o_proj.bias",
                                                {C}, Init::kZeros, false, true)
                                          : kAbsent;
      o.ln2_w = add(p + "post_attention_layernorm.weight", {C}, Init::kOnes,
                    false, true);
      o.ln2_b = kAbsent;
      o.fc_w = add(p + "mlp.gate_up_proj.weight", {2 * FF, C}, Init::kNormal,
                   false, false, 1.0f, gate_up_parts(p, "weight"));
      o.fc_b = spec_.mlp_bias
                   ? add(p + "mlp.gate_up_proj.bias", {2 * FF}, Init::kZeros,
                         false, true, 1.0f, gate_up_parts(p, "bias"))
                   : kAbsent;
      o.fcproj_w =
          add(p + "mlp.down_proj.weight", {C, FF}, Init::kNormal, false, false);
      o.fcproj_b = spec_.mlp_bias ? add(p + "mlp.down_proj.bias", {C},
                                        Init::kZeros, false, true)
                                  : kAbsent;
      layer_offsets_.push_back(o);
      layer_ranges_.push_back({o.ln1_w, layout_.total()});
    }
    lnf_w_ = add("model.norm.weight", {C}, Init::kOnes, false, true);
  }
  wout_offset_ = wte_offset_;
  if (!spec_.tie_word_embeddings) {
    wout_offset_ = add("lm_head.weight", {V, C}, Init::kNormal, false, false);
  }

  if (lora_.enabled()) {
    if (lora_.base_bf16) {
      BuildBf16Base();
      return;
    }
    // Frozen: no padding (nothing shards it) and no gradient.
    kernels::MemoryPurpose purpose("frozen base weights");
    base_ = backend_->Alloc(layout_.total());
    owned_.push_back(base_);
    backend_->Zero(base_, layout_.total());
    base_bytes_ = layout_.total() * sizeof(float);
    return;
  }
  const size_t multiple = std::max(1, capacity_.param_multiple);
  padded_params_ = (layout_.total() + multiple - 1) / multiple * multiple;
  {
    kernels::MemoryPurpose purpose("parameters");
    base_ = params_ = backend_->Alloc(padded_params_);
  }
  owned_.push_back(params_);
  backend_->Zero(params_, padded_params_);
  base_bytes_ = padded_params_ * sizeof(float);
  if (trainable_) {
    kernels::MemoryPurpose purpose("gradients");
    base_grads_ = grads_ = backend_->Alloc(padded_params_);
    owned_.push_back(grads_);
    backend_->Zero(grads_, padded_params_);
  }
}

void Decoder::BuildBf16Base() {
  const std::vector<ParamTensor>& tensors = layout_.tensors();
  std::map<size_t, int> block_of_weight;  // base_layout() offset -> block
  for (int l = 0; l < spec_.n_layer; ++l) {
    const LayerOffsets& o = layer_offsets_[l];
    for (size_t w : {o.qkv_w, o.proj_w, o.fc_w, o.fcproj_w}) {
      block_of_weight[w] = l;
    }
  }
  // Each tensor starts at a multiple of 16 values in either buffer, as in
  // base_layout() (vector and GEMM alignment); a block's weights are
  // consecutive in base_bf16_, so one widening covers them.
  auto aligned = [](size_t n) { return (n + 15) / 16 * 16; };
  std::map<size_t, size_t> moved;  // base_layout() offset -> new offset
  size_t fp32 = 0, bf16 = 0, widest = 0;
  bf16_blocks_.assign(spec_.n_layer, {0, 0});
  held_offset_.resize(tensors.size());
  held_bf16_.resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ParamTensor& t = tensors[i];
    const auto block = block_of_weight.find(t.offset);
    held_bf16_[i] = block != block_of_weight.end();
    if (!held_bf16_[i]) {
      held_offset_[i] = moved[t.offset] = fp32;
      fp32 = aligned(fp32 + t.numel);
      continue;
    }
    std::pair<size_t, size_t>& range = bf16_blocks_[block->second];
    if (range.second == 0) range.first = bf16;
    held_offset_[i] = bf16;
    moved[t.offset] = bf16 - range.first;  // inside widened_
    bf16 = aligned(bf16 + t.numel);
    range.second = bf16 - range.first;
    widest = std::max(widest, range.second);
  }
  auto move = [&](size_t& offset) {
    if (offset != kAbsent) offset = moved.at(offset);
  };
  for (size_t* offset :
       {&wte_offset_, &wpe_offset_, &wout_offset_, &lnf_w_, &lnf_b_}) {
    move(*offset);
  }
  for (LayerOffsets& o : layer_offsets_) {
    for (size_t* offset :
         {&o.ln1_w, &o.ln1_b, &o.qkv_w, &o.qkv_b, &o.proj_w, &o.proj_b,
          &o.ln2_w, &o.ln2_b, &o.fc_w, &o.fc_b, &o.fcproj_w, &o.fcproj_b}) {
      move(*offset);
    }
  }
  auto alloc = [&](size_t n) {
    float* p = backend_->Alloc(std::max<size_t>(n, 1));
    owned_.push_back(p);
    backend_->Zero(p, std::max<size_t>(n, 1));
    return p;
  };
  {
    kernels::MemoryPurpose purpose(
        "frozen base weights (fp32: embeddings, norms, biases)");
    base_ = alloc(fp32);
  }
  {
    kernels::MemoryPurpose purpose(
        "frozen base weights (bf16: the blocks' linear weights)");
    // Two bf16 values per float of backend memory (bf16 is a multiple of 16).
    base_bf16_ = reinterpret_cast<uint16_t*>(alloc(bf16 / 2));
  }
  {
    kernels::MemoryPurpose purpose("one block's frozen weights in fp32");
    widened_ = alloc(widest);
  }
  base_bytes_ = (fp32 + bf16 / 2 + widest) * sizeof(float);
}

namespace {

// The index of the tensor of `layout` that holds element `offset`.
size_t TensorIndex(const ParamLayout& layout, size_t offset) {
  const std::vector<ParamTensor>& tensors = layout.tensors();
  const auto after = std::upper_bound(
      tensors.begin(), tensors.end(), offset,
      [](size_t o, const ParamTensor& t) { return o < t.offset; });
  return static_cast<size_t>(after - tensors.begin()) - 1;
}

}  // namespace

void Decoder::StoreBase(size_t offset, const float* host, size_t n) {
  if (base_bf16_ == nullptr) {
    backend_->CopyToDevice(base_ + offset, host, n);
    return;
  }
  const size_t i = TensorIndex(layout_, offset);
  const size_t begin = held_offset_[i] + (offset - layout_.tensors()[i].offset);
  if (!held_bf16_[i]) {
    backend_->CopyToDevice(base_ + begin, host, n);
    return;
  }
  widened_layer_ = -1;
  // Backend memory moves whole floats, two bf16 values each: a range with an
  // odd end keeps its neighbour's half of the edge float.
  float* packed = reinterpret_cast<float*>(base_bf16_);
  const size_t first = begin / 2, last = (begin + n + 1) / 2;
  std::vector<uint16_t> staged(2 * (last - first));
  float* staged_floats = reinterpret_cast<float*>(staged.data());
  if (begin % 2 != 0) backend_->CopyToHost(staged_floats, packed + first, 1);
  if ((begin + n) % 2 != 0) {
    backend_->CopyToHost(staged_floats + (last - first - 1), packed + last - 1,
                         1);
  }
  for (size_t k = 0; k < n; ++k) {
    staged[begin - 2 * first + k] = io::FloatToBf16(host[k]);
  }
  backend_->CopyToDevice(packed + first, staged_floats, last - first);
}

void Decoder::CopyBaseToHost(float* host) const {
  if (base_bf16_ == nullptr) {
    backend_->CopyToHost(host, base_, layout_.total());
    return;
  }
  const float* packed = reinterpret_cast<const float*>(base_bf16_);
  std::vector<uint16_t> staged;
  const std::vector<ParamTensor>& tensors = layout_.tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ParamTensor& t = tensors[i];
    if (!held_bf16_[i]) {
      backend_->CopyToHost(host + t.offset, base_ + held_offset_[i], t.numel);
      continue;
    }
    // bf16 tensors start at even (multiple of 16) offsets.
    staged.resize((t.numel + 1) / 2 * 2);
    backend_->CopyToHost(reinterpret_cast<float*>(staged.data()),
                         packed + held_offset_[i] / 2, staged.size() / 2);
    for (size_t k = 0; k < t.numel; ++k) {
      host[t.offset + k] = io::Bf16ToFloat(staged[k]);
    }
  }
}

bool Decoder::IsHeldInBf16(const ParamTensor& t) const {
  if (base_bf16_ == nullptr) return false;
  const size_t i = TensorIndex(layout_, t.offset);
  return layout_.tensors()[i].name == t.name && held_bf16_[i];
}

void Decoder::MlpActivation(const LayerActs& a, int N) {
  const int FF = spec_.intermediate;
  if (llama_family_) {
    backend_->SwiGluForward(a.act, a.fc, N, FF);
  } else {
    backend_->GeluForward(a.act, a.fc, static_cast<size_t>(N) * FF);
  }
}

void Decoder::WidenBlock(int layer) {
  if (base_bf16_ == nullptr || widened_layer_ == layer) return;
  const auto [first, count] = bf16_blocks_[layer];
  backend_->WidenBf16(widened_, base_bf16_ + first, count);
  widened_layer_ = layer;
}

void Decoder::BuildAdapters() {
  const int r = lora_.r;
  const int FF = spec_.intermediate;
  const int ATT = spec_.n_head * spec_.head_dim;
  const int KV = spec_.n_kv_head * spec_.head_dim;
  const int QKV = ATT + 2 * KV;
  const int FC = llama_family_ ? 2 * FF : FF;
  adapters_.assign(spec_.n_layer, {});
  layer_ranges_.clear();
  auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
    ParamTensor t;
    t.name = "base_model.model." + name;
    t.shape = {rows, cols};
    t.init = Init::kZeros;
    return adapter_layout_.Add(std::move(t));
  };
  // Block by block, so that each block's adapters are one range.
  size_t module = 0;
  for (int l = 0; l < spec_.n_layer; ++l) {
    const size_t begin = (adapter_layout_.total() + 15) / 16 * 16;
    for (; module < lora_.modules.size() && lora_.modules[module].layer == l;
         ++module) {
      const lora::LinearModule& m = lora_.modules[module];
      Adapter ad;
      ad.module = m;
      ad.index = static_cast<int>(adapters_[l].size());
      switch (m.projection) {
        case lora::Projection::kAttentionQkv:
        case lora::Projection::kQuery:
          ad.slot = Slot::kQkv, ad.width = QKV;
          break;
        case lora::Projection::kKey:
          ad.slot = Slot::kQkv, ad.width = QKV, ad.column = ATT;
          break;
        case lora::Projection::kValue:
          ad.slot = Slot::kQkv, ad.width = QKV, ad.column = ATT + KV;
          break;
        case lora::Projection::kAttentionOut:
          ad.slot = Slot::kAttentionOut, ad.width = spec_.hidden;
          break;
        case lora::Projection::kGate:
        case lora::Projection::kMlpIn:
          ad.slot = Slot::kMlpIn, ad.width = FC;
          break;
        case lora::Projection::kUp:
          ad.slot = Slot::kMlpIn, ad.width = FC, ad.column = FF;
          break;
        case lora::Projection::kMlpOut:
          ad.slot = Slot::kMlpOut, ad.width = spec_.hidden;
          break;
      }
      ad.a = add(m.path + ".lora_A.weight", r, m.in_features);
      ad.b = add(m.path + ".lora_B.weight", m.out_features, r);
      adapters_[l].push_back(ad);
    }
    layer_ranges_.push_back(
        {std::min(begin, adapter_layout_.total()), adapter_layout_.total()});
  }
  const size_t multiple = std::max(1, capacity_.param_multiple);
  padded_params_ =
      (adapter_layout_.total() + multiple - 1) / multiple * multiple;
  params_ = backend_->Alloc(padded_params_);
  grads_ = backend_->Alloc(padded_params_);
  owned_.push_back(params_);
  owned_.push_back(grads_);
  backend_->Zero(params_, padded_params_);
  backend_->Zero(grads_, padded_params_);
}

std::vector<LoraAdapterRef> Decoder::lora_adapters() const {
  std::vector<LoraAdapterRef> refs;
  for (const std::vector<Adapter>& block : adapters_) {
    for (const Adapter& ad : block) refs.push_back({ad.module, ad.a, ad.b});
  }
  return refs;
}

void Decoder::InitAdapters(uint64_t seed) {
  util::Rng rng(seed);
  std::vector<float> host;
  for (const LoraAdapterRef& ref : lora_adapters()) {
    const size_t in = static_cast<size_t>(ref.module.in_features);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    host.resize(static_cast<size_t>(lora_.r) * in);
    for (float& x : host) {
      x = static_cast<float>((2.0 * rng.Uniform() - 1.0) * bound);
    }
    backend_->CopyToDevice(params_ + ref.a, host.data(), host.size());
    backend_->Zero(params_ + ref.b,
                   static_cast<size_t>(ref.module.out_features) * lora_.r);
  }
}

void Decoder::AllocateActivations() {
  const size_t N = capacity_.max_rows;
  const size_t C = spec_.hidden;
  const size_t FF = spec_.intermediate;
  const size_t FC = llama_family_ ? 2 * FF : FF;
  const size_t ATT = static_cast<size_t>(spec_.n_head) * spec_.head_dim;
  const size_t QKV =
      static_cast<size_t>(spec_.n_head + 2 * spec_.n_kv_head) * spec_.head_dim;
  // What attention saves for its backward is the backend's own:
  // probabilities (Σ_s NH·len_s²) or a row logsumexp (NH·N), or either.
  const size_t probs = backend_->MaxAttentionProbsSize(
      capacity_.max_rows, capacity_.max_seq_len, spec_.n_head);
  auto alloc = [&](size_t n) {
    float* p = backend_->Alloc(n);
    owned_.push_back(p);
    return p;
  };
  kernels::MemoryPurpose purpose("activations");
  if (llama_family_) {
    // Positions restart at 0 for every sequence, so max_seq_len rows cover
    // every position a batch can hold.
    std::vector<float> cos, sin;
    RopeTables(spec_, capacity_.max_seq_len, &cos, &sin);
    kernels::MemoryPurpose rope_purpose("rotary tables");
    rope_cos_ = alloc(cos.size());
    rope_sin_ = alloc(sin.size());
    backend_->CopyToDevice(rope_cos_, cos.data(), cos.size());
    backend_->CopyToDevice(rope_sin_, sin.data(), sin.size());
  }
  encoded_ = alloc(N * C);
  lnf_ = alloc(N * C);
  lnf_mean_ = llama_family_ ? nullptr : alloc(N);
  lnf_rstd_ = alloc(N);
  // A frozen model needs no saved activations: one block's buffers are reused
  // by every block. Under activation checkpointing every block shares block
  // 0's buffers but keeps its own output, the next block's saved input. The
  // MLP activation is never saved: Backward recomputes it, an elementwise
  // pass, rather than keep [N, FF] floats per block (GPT-2 small at 1024
  // tokens: 132 MiB).
  const int stored = trainable_ ? spec_.n_layer : 1;
  float* mlp_act = nullptr;
  const bool checkpointing = trainable_ && capacity_.activation_checkpointing;
  for (int l = 0; l < stored; ++l) {
    kernels::MemoryPurpose layer_purpose(absl::StrCat("layer ", l));
    LayerActs a;
    if (checkpointing && l > 0) {
      a = acts_.front();
      a.res3 = alloc(N * C);
      acts_.push_back(a);
      continue;
    }
    a.ln1 = alloc(N * C);
    a.ln1_mean = llama_family_ ? nullptr : alloc(N);
    a.ln1_rstd = alloc(N);
    a.qkv = alloc(N * QKV);
    a.att = alloc(N * ATT);
    a.probs = alloc(probs);
    a.res2 = alloc(N * C);
    a.ln2 = alloc(N * C);
    a.ln2_mean = llama_family_ ? nullptr : alloc(N);
    a.ln2_rstd = alloc(N);
    a.fc = alloc(N * FC);
    if (mlp_act == nullptr) mlp_act = alloc(N * FF);
    a.act = mlp_act;
    a.res3 = alloc(N * C);
    acts_.push_back(a);
  }
  branch_out_ = alloc(N * C);
  if (trainable_) {
    dhidden_ = alloc(N * C);
    dresidual_ = alloc(N * C);
    dscratch_c_ = alloc(N * C);
    dscratch_att_ = alloc(N * ATT);
    dscratch_qkv_ = alloc(N * QKV);
    dscratch_ff_ = alloc(N * FF);
    dscratch_fc_ = alloc(N * FC);
  }
  if (!lora_.enabled()) return;
  const size_t r = lora_.r;
  size_t widest_in = 0, widest_slot = 0;
  for (std::vector<Adapter>& block : adapters_) {
    for (Adapter& ad : block) {
      const size_t in = ad.module.in_features;
      widest_in = std::max(widest_in, in);
      widest_slot = std::max(widest_slot, static_cast<size_t>(ad.width));
      ad.scaled_h = alloc(N * r);
      if (lora_.dropout > 0) {
        ad.mask = alloc(N * in);
        ad.host_mask.reserve(N * in);
      }
      if (ad.module.out_features < ad.width) {
        ad.b_wide = alloc(ad.width * r);
        backend_->Zero(ad.b_wide, ad.width * r);
      }
    }
  }
  lora_input_ = alloc(N * widest_in);
  lora_dinput_ = alloc(N * widest_in);
  lora_delta_ = alloc(N * widest_slot);
  lora_dh_ = alloc(N * r);
  lora_db_wide_ = alloc(widest_slot * r);
}

void Decoder::AdaptersForward(int layer, Slot slot, float* out,
                              const float* inp, int N, bool recompute) {
  if (!forward_used_adapters_) return;
  Backend& b = *backend_;
  const size_t n = static_cast<size_t>(N);
  const int r = lora_.r;
  for (Adapter& ad : adapters_[layer]) {
    if (ad.slot != slot) continue;
    const int in = static_cast<int>(ad.module.in_features);
    const size_t out_rows = static_cast<size_t>(ad.module.out_features);
    const float* x = inp;
    if (forward_used_dropout_) {
      // The rerun of activation checkpointing finds the masks in place.
      if (!recompute) {
        util::Rng rng(*dropout_seed_ ^
                      (0x9E3779B97F4A7C15ull *
                       (static_cast<uint64_t>(layer) * 64 + ad.index + 1)));
        const float keep = 1.0f / (1.0f - lora_.dropout);
        ad.host_mask.resize(n * in);
        for (float& m : ad.host_mask) {
          m = rng.Uniform() < lora_.dropout ? 0.0f : keep;
        }
        b.CopyToDevice(ad.mask, ad.host_mask.data(), ad.host_mask.size());
      }
      b.Multiply(lora_input_, inp, ad.mask, n * in);
      x = lora_input_;
    }
    b.MatmulForward(ad.scaled_h, x, forward_adapters_ + ad.a, nullptr, N, in,
                    r);
    b.Scale(ad.scaled_h, lora_.scaling, n * r);
    const float* weight_b = forward_adapters_ + ad.b;
    if (ad.b_wide != nullptr) {
      float* rows = ad.b_wide + static_cast<size_t>(ad.column) * r;
      b.Zero(rows, out_rows * r);
      b.Axpy(rows, 1.0f, weight_b, out_rows * r);
      weight_b = ad.b_wide;
    }
    b.MatmulForward(lora_delta_, ad.scaled_h, weight_b, nullptr, N, r,
                    ad.width);
    b.Axpy(out, 1.0f, lora_delta_, n * ad.width);
  }
}

void Decoder::AdaptersBackward(int layer, Slot slot, float* dinp,
                               const float* dout, const float* inp, int N) {
  if (!forward_used_adapters_) return;
  Backend& b = *backend_;
  const size_t n = static_cast<size_t>(N);
  const int r = lora_.r;
  for (Adapter& ad : adapters_[layer]) {
    if (ad.slot != slot) continue;
    const int in = static_cast<int>(ad.module.in_features);
    const size_t out_rows = static_cast<size_t>(ad.module.out_features);
    b.Zero(lora_dh_, n * r);
    if (ad.b_wide != nullptr) {
      b.Zero(lora_db_wide_, static_cast<size_t>(ad.width) * r);
      b.MatmulBackward(lora_dh_, lora_db_wide_, nullptr, dout, ad.scaled_h,
                       ad.b_wide, N, r, ad.width);
      b.Axpy(grads_ + ad.b, 1.0f,
             lora_db_wide_ + static_cast<size_t>(ad.column) * r, out_rows * r);
    } else {
      b.MatmulBackward(lora_dh_, grads_ + ad.b, nullptr, dout, ad.scaled_h,
                       params_ + ad.b, N, r, ad.width);
    }
    b.Scale(lora_dh_, lora_.scaling, n * r);
    if (!forward_used_dropout_) {
      b.MatmulBackward(dinp, grads_ + ad.a, nullptr, lora_dh_, inp,
                       params_ + ad.a, N, in, r);
      continue;
    }
    b.Multiply(lora_input_, inp, ad.mask, n * in);
    b.Zero(lora_dinput_, n * in);
    b.MatmulBackward(lora_dinput_, grads_ + ad.a, nullptr, lora_dh_,
                     lora_input_, params_ + ad.a, N, in, r);
    b.Multiply(lora_dinput_, lora_dinput_, ad.mask, n * in);
    b.Axpy(dinp, 1.0f, lora_dinput_, n * in);
  }
}

namespace {

// Buffers transformers recomputes instead of loading: older GPT-2 saves hold
// the causal mask, older Llama saves the rotary frequencies.
bool IsRecomputedBuffer(std::string_view name) {
  const absl::string_view n(name.data(), name.size());
  return absl::EndsWith(n, ".attn.bias") ||
         absl::EndsWith(n, ".attn.masked_bias") ||
         absl::EndsWith(n, ".rotary_emb.inv_freq");
}

// Which config.json setting leaves the weights' tensor `name` unused.
std::string UnusedTensorReason(const io::ModelSpec& spec,
                               std::string_view name) {
  const bool gpt2 = spec.arch == io::ModelSpec::Arch::kGpt2;
  const std::string_view prefix = gpt2 ? "transformer.h." : "model.layers.";
  int64_t layer = -1;
  if (name.substr(0, prefix.size()) == prefix) {
    const std::string_view rest = name.substr(prefix.size());
    const std::string_view digits = rest.substr(0, rest.find('.'));
    if (!absl::SimpleAtoi(absl::string_view(digits.data(), digits.size()),
                          &layer)) {
      layer = -1;
    }
  }
  if (layer >= spec.n_layer) {
    return absl::StrCat("config.json's ",
                        gpt2 ? "n_layer" : "num_hidden_layers", " is ",
                        spec.n_layer, ", but the weights have layer ", layer);
  }
  if (!gpt2 &&
      absl::EndsWith(absl::string_view(name.data(), name.size()), ".bias")) {
    const bool attention = name.find(".self_attn.") != std::string_view::npos;
    if (spec.hf_model_type == "llama") {
      return absl::StrCat("config.json's ",
                          attention ? "attention_bias" : "mlp_bias",
                          " is false");
    }
    return absl::StrCat(spec.hf_architecture, " has no such bias");
  }
  return absl::StrCat(spec.hf_architecture, " has no such tensor");
}

}  // namespace

absl::Status Decoder::LoadHf(const io::WeightStore& store) {
  if (!spec_.tie_word_embeddings && !store.Has("lm_head.weight")) {
    return absl::NotFoundError(
        absl::StrCat(store.model_dir(),
                     ": lm_head.weight is missing but config.json says "
                     "tie_word_embeddings is false"));
  }
  const std::vector<HfTensorRef> refs = layout_.HfTensors();
  // transformers warns about weights its model does not use and drops them;
  // they mean config.json describes another model than the weights, and
  // training it would train something else.
  std::set<std::string_view> expected;
  for (const HfTensorRef& ref : refs) expected.insert(ref.name);
  const std::string_view embedding = layout_.tensors().front().name;
  std::vector<std::string> unused;
  for (const std::string& name : store.Names()) {
    const bool tied_head =
        spec_.tie_word_embeddings && name == "lm_head.weight";
    if (expected.count(name) == 0 && !tied_head && !IsRecomputedBuffer(name)) {
      unused.push_back(name);
    }
  }
  if (!unused.empty()) {
    const std::string& first = unused.front();
    return absl::InvalidArgumentError(absl::StrCat(
        store.model_dir(), ": the weights hold ", unused.size(),
        " tensor(s) the model does not use, first '", first, "' (in ",
        store.FileOf(first)->path(), "): ", UnusedTensorReason(spec_, first),
        "; fix config.json or the weights"));
  }

  std::vector<float> hf, staged;
  for (const HfTensorRef& ref : refs) {
    hf.resize(ref.numel);
    staged.resize(ref.numel);
    absl::Status s = store.ReadFloat(ref.name, ref.shape, hf.data());
    if (!s.ok()) return s;
    // One pass per tensor: NaN or infinite weights make every loss NaN,
    // steps later and far from their cause.
    const auto bad = std::find_if_not(hf.begin(), hf.end(),
                                      [](float v) { return std::isfinite(v); });
    if (bad != hf.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          store.FileOf(ref.name)->path(), ": tensor '", ref.name, "' holds ",
          std::isnan(*bad) ? "NaN" : "an infinity", " at flat index ",
          bad - hf.begin(), " (of ", ref.numel, ")"));
    }
    if (ref.name == embedding && spec_.tie_word_embeddings &&
        store.Has("lm_head.weight")) {
      // transformers ties the output layer to the embedding and ignores a
      // saved lm_head.weight; one that differs was meant to be used.
      s = store.ReadFloat("lm_head.weight", ref.shape, staged.data());
      if (!s.ok()) return s;
      if (staged != hf) {
        return absl::InvalidArgumentError(absl::StrCat(
            store.FileOf("lm_head.weight")->path(),
            ": tensor 'lm_head.weight' differs from '", ref.name,
            "', but config.json's tie_word_embeddings is true (the output "
            "layer is the embedding); set it to false or remove "
            "lm_head.weight"));
      }
    }
    HfToLayout(ref, hf.data(), staged.data());
    StoreBase(ref.offset, staged.data(), ref.numel);
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
    StoreBase(t.offset, host.data(), t.numel);
  }
}

void Decoder::NormForward(float* out, float* mean, float* rstd,
                          const float* inp, size_t weight, size_t bias, int N) {
  if (llama_family_) {
    backend_->RmsNormForward(out, rstd, inp, P(weight), N, spec_.hidden,
                             spec_.norm_eps);
  } else {
    backend_->LayerNormForward(out, mean, rstd, inp, P(weight), P(bias), N,
                               spec_.hidden, spec_.norm_eps);
  }
}

void Decoder::NormBackward(float* dinp, const float* dout, const float* inp,
                           size_t weight, size_t bias, const float* mean,
                           const float* rstd, int N) {
  if (llama_family_) {
    backend_->RmsNormBackward(dinp, G(weight), dout, inp, P(weight), rstd, N,
                              spec_.hidden);
  } else {
    backend_->LayerNormBackward(dinp, G(weight), G(bias), dout, inp, P(weight),
                                mean, rstd, N, spec_.hidden);
  }
}

void Decoder::SelectForwardAdapters() {
  if (reference_mode_) {
    forward_used_adapters_ = lora_.enabled() && reference_adapters_ != nullptr;
    forward_adapters_ = reference_adapters_;
  } else {
    forward_used_adapters_ = lora_.enabled() && adapters_enabled_;
    forward_adapters_ = params_;
  }
}

const float* Decoder::Forward(const PackedBatch& batch) {
  const int N = batch.rows();
  const int C = spec_.hidden;
  SelectForwardAdapters();
  forward_used_dropout_ = forward_used_adapters_ && !reference_mode_ &&
                          lora_.dropout > 0 && dropout_seed_.has_value();
  backend_->EmbeddingForward(encoded_, batch.tokens.data(),
                             batch.positions.data(), P(wte_offset_),
                             P(wpe_offset_), N, C);
  Observe(Activation::kEmbedding, -1, encoded_, N, C, C);
  const float* residual = encoded_;
  for (int l = 0; l < spec_.n_layer; ++l) {
    BlockForward(l, batch, residual, /*recompute=*/false);
    residual = acts_[trainable_ ? l : 0].res3;
  }
  NormForward(lnf_, lnf_mean_, lnf_rstd_, residual, lnf_w_, lnf_b_, N);
  Observe(Activation::kFinalNorm, -1, lnf_, N, C, C);
  return lnf_;
}

void Decoder::BlockForward(int l, const PackedBatch& batch,
                           const float* residual, bool recompute) {
  Backend& b = *backend_;
  const int N = batch.rows();
  const size_t n = static_cast<size_t>(N);
  const int C = spec_.hidden;
  const int FF = spec_.intermediate;
  const int FC = llama_family_ ? 2 * FF : FF;
  const int NH = spec_.n_head, NKV = spec_.n_kv_head, hs = spec_.head_dim;
  const int ATT = NH * hs;
  const int QKV = (NH + 2 * NKV) * hs;
  const int S = static_cast<int>(batch.spans.size());
  // Backward's rerun must not report a block twice.
  auto observe = [&](Activation kind, const float* data, int width,
                     int stride) {
    if (!recompute) Observe(kind, l, data, N, width, stride);
  };
  const LayerOffsets& o = layer_offsets_[l];
  LayerActs& a = acts_[trainable_ ? l : 0];
  WidenBlock(l);
  // Attention block.
  NormForward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, o.ln1_w, o.ln1_b, N);
  observe(Activation::kAttentionNorm, a.ln1, C, C);
  b.MatmulForward(a.qkv, a.ln1, W(o.qkv_w), P(o.qkv_b), N, C, QKV);
  AdaptersForward(l, Slot::kQkv, a.qkv, a.ln1, N, recompute);
  observe(Activation::kQuery, a.qkv, ATT, QKV);
  observe(Activation::kKey, a.qkv + ATT, NKV * hs, QKV);
  observe(Activation::kValue, a.qkv + ATT + NKV * hs, NKV * hs, QKV);
  if (llama_family_) {
    b.RopeForward(a.qkv, batch.positions.data(), rope_cos_, rope_sin_, N, NH,
                  NKV, hs);
    observe(Activation::kQueryRotary, a.qkv, ATT, QKV);
    observe(Activation::kKeyRotary, a.qkv + ATT, NKV * hs, QKV);
  }
  b.AttentionForward(a.att, a.probs, a.qkv, batch.spans.data(), S, NH, NKV, hs);
  observe(Activation::kAttentionValues, a.att, ATT, ATT);
  b.MatmulForward(branch_out_, a.att, W(o.proj_w), P(o.proj_b), N, ATT, C);
  AdaptersForward(l, Slot::kAttentionOut, branch_out_, a.att, N, recompute);
  observe(Activation::kAttentionOutput, branch_out_, C, C);
  b.Add(a.res2, residual, branch_out_, n * C);
  observe(Activation::kResidAfterAttention, a.res2, C, C);
  // MLP block.
  NormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, o.ln2_w, o.ln2_b, N);
  observe(Activation::kMlpNorm, a.ln2, C, C);
  b.MatmulForward(a.fc, a.ln2, W(o.fc_w), P(o.fc_b), N, C, FC);
  AdaptersForward(l, Slot::kMlpIn, a.fc, a.ln2, N, recompute);
  MlpActivation(a, N);
  if (recompute) return;
  observe(Activation::kMlpActivation, a.act, FF, FF);
  b.MatmulForward(branch_out_, a.act, W(o.fcproj_w), P(o.fcproj_b), N, FF, C);
  AdaptersForward(l, Slot::kMlpOut, branch_out_, a.act, N, recompute);
  observe(Activation::kMlpOutput, branch_out_, C, C);
  b.Add(a.res3, a.res2, branch_out_, n * C);
  observe(Activation::kResidAfterMlp, a.res3, C, C);
}

KvCache::~KvCache() {
  for (float* p : layers_) backend_->Free(p);
}

absl::StatusOr<std::unique_ptr<KvCache>> Decoder::NewKvCache(
    int max_len) const {
  if (max_len < 1 || max_len > capacity_.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("a key/value cache of ", max_len,
                     " tokens was requested; this decoder was built for "
                     "sequences of 1 to ",
                     capacity_.max_seq_len, " tokens"));
  }
  const size_t qkv =
      static_cast<size_t>(spec_.n_head + 2 * spec_.n_kv_head) * spec_.head_dim;
  // Create's memory check leaves the cache out: it grows with the number of
  // layers times the sequence length, which only generation needs.
  if (backend_->HostAddressable()) {
    const uint64_t needed = (Count(spec_.n_layer) * Count(max_len) *
                             Count(qkv) * Count(sizeof(float)))
                                .value();
    const std::optional<uint64_t> available = AvailableHostMemory();
    if (available.has_value() && needed > *available) {
      return absl::ResourceExhaustedError(
          absl::StrCat("a key/value cache of ", max_len, " tokens for ",
                       spec_.n_layer, " layers needs ", needed, " bytes, but ",
                       *available, " bytes of memory are available"));
    }
  }
  std::vector<float*> layers;
  for (int l = 0; l < spec_.n_layer; ++l) {
    kernels::MemoryPurpose purpose(
        absl::StrCat("key/value cache of layer ", l));
    layers.push_back(backend_->Alloc(qkv * max_len));
  }
  return std::unique_ptr<KvCache>(
      new KvCache(backend_, std::move(layers), max_len));
}

// Forward's block structure with two differences: the new rows' q|k|v are
// projected straight into the cache, and attention reads the cached keys and
// values instead of recomputing them.
const float* Decoder::ForwardIncremental(absl::Span<const int32_t> tokens,
                                         KvCache* cache) {
  Backend& b = *backend_;
  const int N = static_cast<int>(tokens.size());
  const int past = cache->length_;
  if (N < 1 || N > capacity_.max_rows || past + N > cache->max_len_) {
    // A caller bug: generation sizes its calls from the capacity and cache.
    std::fprintf(stderr,
                 "Decoder::ForwardIncremental: %d tokens after %d cached do "
                 "not fit (at most %d per call, %d in the cache)\n",
                 N, past, capacity_.max_rows, cache->max_len_);
    std::abort();
  }
  const size_t n = static_cast<size_t>(N);
  const int C = spec_.hidden;
  const int FF = spec_.intermediate;
  const int FC = llama_family_ ? 2 * FF : FF;
  const int NH = spec_.n_head, NKV = spec_.n_kv_head, hs = spec_.head_dim;
  const int ATT = NH * hs;
  const size_t QKV = static_cast<size_t>(NH + 2 * NKV) * hs;

  SelectForwardAdapters();
  forward_used_dropout_ = false;
  positions_.resize(n);
  for (int i = 0; i < N; ++i) positions_[i] = past + i;
  b.EmbeddingForward(encoded_, tokens.data(), positions_.data(), P(wte_offset_),
                     P(wpe_offset_), N, C);
  const float* residual = encoded_;
  for (int l = 0; l < spec_.n_layer; ++l) {
    const LayerOffsets& o = layer_offsets_[l];
    LayerActs& a = acts_[trainable_ ? l : 0];
    float* qkv = cache->layers_[l] + past * QKV;
    WidenBlock(l);
    // Attention block.
    NormForward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, o.ln1_w, o.ln1_b, N);
    b.MatmulForward(qkv, a.ln1, W(o.qkv_w), P(o.qkv_b), N, C,
                    static_cast<int>(QKV));
    AdaptersForward(l, Slot::kQkv, qkv, a.ln1, N, /*recompute=*/false);
    if (llama_family_) {
      b.RopeForward(qkv, positions_.data(), rope_cos_, rope_sin_, N, NH, NKV,
                    hs);
    }
    b.CachedAttentionForward(a.att, cache->layers_[l], past, N, NH, NKV, hs);
    b.MatmulForward(branch_out_, a.att, W(o.proj_w), P(o.proj_b), N, ATT, C);
    AdaptersForward(l, Slot::kAttentionOut, branch_out_, a.att, N, false);
    b.Add(a.res2, residual, branch_out_, n * C);
    // MLP block.
    NormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, o.ln2_w, o.ln2_b, N);
    b.MatmulForward(a.fc, a.ln2, W(o.fc_w), P(o.fc_b), N, C, FC);
    AdaptersForward(l, Slot::kMlpIn, a.fc, a.ln2, N, false);
    MlpActivation(a, N);
    b.MatmulForward(branch_out_, a.act, W(o.fcproj_w), P(o.fcproj_b), N, FF, C);
    AdaptersForward(l, Slot::kMlpOut, branch_out_, a.act, N, false);
    b.Add(a.res3, a.res2, branch_out_, n * C);
    residual = a.res3;
  }
  NormForward(lnf_, lnf_mean_, lnf_rstd_, residual, lnf_w_, lnf_b_, N);
  cache->length_ += N;
  return lnf_;
}

void Decoder::Backward(const PackedBatch& batch) {
  Backend& b = *backend_;
  const int N = batch.rows();
  const size_t n = static_cast<size_t>(N);
  const int C = spec_.hidden;
  const int FF = spec_.intermediate;
  const int FC = llama_family_ ? 2 * FF : FF;
  const int NH = spec_.n_head, NKV = spec_.n_kv_head, hs = spec_.head_dim;
  const int ATT = NH * hs;
  const int QKV = (NH + 2 * NKV) * hs;
  const int S = static_cast<int>(batch.spans.size());
  const int L = spec_.n_layer;

  b.Zero(dresidual_, n * C);
  NormBackward(dresidual_, dhidden_, acts_[L - 1].res3, lnf_w_, lnf_b_,
               lnf_mean_, lnf_rstd_, N);
  // dresidual_ holds the gradient w.r.t. the residual stream; each block's
  // normalization backward accumulates its branch into it (the residual adds
  // pass the gradient through unchanged).
  for (int l = L - 1; l >= 0; --l) {
    const LayerOffsets& o = layer_offsets_[l];
    const LayerActs& a = acts_[l];
    const float* residual_in = l == 0 ? encoded_ : acts_[l - 1].res3;
    // The last block's activations are still in the shared buffers from
    // Forward; every other block's are refilled from its saved input.
    if (capacity_.activation_checkpointing && l < L - 1) {
      BlockForward(l, batch, residual_in, /*recompute=*/true);
    } else {
      // The blocks share one MLP-activation buffer.
      MlpActivation(a, N);
    }
    WidenBlock(l);
    // MLP block.
    b.Zero(dscratch_ff_, n * FF);
    b.MatmulBackward(dscratch_ff_, G(o.fcproj_w), G(o.fcproj_b), dresidual_,
                     a.act, W(o.fcproj_w), N, FF, C);
    AdaptersBackward(l, Slot::kMlpOut, dscratch_ff_, dresidual_, a.act, N);
    b.Zero(dscratch_fc_, n * FC);
    if (llama_family_) {
      b.SwiGluBackward(dscratch_fc_, a.fc, dscratch_ff_, N, FF);
    } else {
      b.GeluBackward(dscratch_fc_, a.fc, dscratch_ff_, n * FF);
    }
    b.Zero(dscratch_c_, n * C);
    b.MatmulBackward(dscratch_c_, G(o.fc_w), G(o.fc_b), dscratch_fc_, a.ln2,
                     W(o.fc_w), N, C, FC);
    AdaptersBackward(l, Slot::kMlpIn, dscratch_c_, dscratch_fc_, a.ln2, N);
    NormBackward(dresidual_, dscratch_c_, a.res2, o.ln2_w, o.ln2_b, a.ln2_mean,
                 a.ln2_rstd, N);
    // Attention block.
    b.Zero(dscratch_att_, n * ATT);
    b.MatmulBackward(dscratch_att_, G(o.proj_w), G(o.proj_b), dresidual_, a.att,
                     W(o.proj_w), N, ATT, C);
    AdaptersBackward(l, Slot::kAttentionOut, dscratch_att_, dresidual_, a.att,
                     N);
    b.Zero(dscratch_qkv_, n * QKV);
    b.AttentionBackward(dscratch_qkv_, dscratch_att_, a.qkv, a.att, a.probs,
                        batch.spans.data(), S, NH, NKV, hs);
    if (llama_family_) {
      b.RopeBackward(dscratch_qkv_, batch.positions.data(), rope_cos_,
                     rope_sin_, N, NH, NKV, hs);
    }
    b.Zero(dscratch_c_, n * C);
    b.MatmulBackward(dscratch_c_, G(o.qkv_w), G(o.qkv_b), dscratch_qkv_, a.ln1,
                     W(o.qkv_w), N, C, QKV);
    AdaptersBackward(l, Slot::kQkv, dscratch_c_, dscratch_qkv_, a.ln1, N);
    NormBackward(dresidual_, dscratch_c_, residual_in, o.ln1_w, o.ln1_b,
                 a.ln1_mean, a.ln1_rstd, N);
    const ParamRange range = layer_ranges_[l];
    if (grads_ready_ && range.end > range.begin) grads_ready_(l, range);
  }
  // With LoRA the embeddings are frozen.
  if (base_grads_ == nullptr) return;
  b.EmbeddingBackward(G(wte_offset_), G(wpe_offset_), dresidual_,
                      batch.tokens.data(), batch.positions.data(), N, C);
}

}  // namespace prefopt::model
