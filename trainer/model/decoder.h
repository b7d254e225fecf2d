// A decoder-only language model with explicit forward and backward passes
// over a packed batch, written once against kernels::Backend. Two families
// share the pre-norm block structure (norm -> attention -> residual, norm ->
// MLP -> residual):
// - GPT-2 (GPT2LMHeadModel): learned positions, LayerNorm, fused c_attn,
//   GELU MLP, biases everywhere, tied output embedding.
// - Llama (LlamaForCausalLM, MistralForCausalLM without a sliding window) and
//   Qwen2 (Qwen2ForCausalLM): RMSNorm, rotary positions on q and k, grouped
//   KV heads, SwiGLU MLP, biases per the spec (Qwen2: q/k/v only), tied or
//   untied output embedding. Hugging Face's separate q_proj/k_proj/v_proj and
//   gate_proj/up_proj weights are held fused, as one qkv_proj and one
//   gate_up_proj tensor per layer (ParamTensor::hf_parts names the parts).
//
// The model stops at the final normalization: Forward returns the final hidden
// states, and the output layer (hidden → vocabulary) is applied by the chunked
// output layer of the objective runner, which never materializes all logits
// (docs/objectives.md §7). The output embedding is exposed for that purpose.
#ifndef PREFOPT_TRAINER_MODEL_DECODER_H_
#define PREFOPT_TRAINER_MODEL_DECODER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/lora/lora_modules.h"
#include "trainer/model/param_layout.h"

namespace prefopt::model {

// Sequences packed back to back without padding. Host memory.
struct PackedBatch {
  std::vector<int32_t> tokens;     // [N]
  std::vector<int32_t> positions;  // [N], restarting at 0 for each sequence
  std::vector<kernels::SeqSpan> spans;

  int rows() const { return static_cast<int>(tokens.size()); }
  void Clear();
  // Appends the sequence first ++ second.
  void AddSequence(absl::Span<const int32_t> first,
                   absl::Span<const int32_t> second = {});
};

// A tensor produced inside Forward, as an ActivationObserver sees it.
enum class Activation {
  kEmbedding,      // the embedding output (the residual stream into layer 0)
  kAttentionNorm,  // the attention block's input norm (ln_1, input_layernorm)
  // The attention projections as they leave the q/k/v projection, before
  // rotary embedding: NH query heads, NKV key heads, NKV value heads.
  kQuery,
  kKey,
  kValue,
  // Llama/Qwen2 only: the query and key heads after rotary embedding.
  kQueryRotary,
  kKeyRotary,
  // The attention-weighted values, heads concatenated [N, NH * head_dim]:
  // the input of the output projection (c_proj, o_proj).
  kAttentionValues,
  // The attention block's output (after the output projection, before the
  // residual add): what Hugging Face's attention module returns.
  kAttentionOutput,
  kResidAfterAttention,  // the residual stream after the attention block
  kMlpNorm,              // the MLP block's input norm (ln_2,
                         // post_attention_layernorm)
  kMlpActivation,        // GELU(c_fc) or SwiGLU(gate, up), [N, intermediate]
  kMlpOutput,  // the MLP block's output (after its output projection, before
               // the residual add)
  kResidAfterMlp,  // the residual stream after the MLP block (layer output)
  kFinalNorm,      // the final normalization's output (Forward's result)
};

// `rows` rows of `width` floats; row r starts at data + r * stride. Backend
// memory, valid only during the Observe call: a frozen decoder reuses one
// layer's buffers for every layer.
struct ActivationView {
  Activation kind;
  int layer;  // 0-based block index; -1 for kEmbedding and kFinalNorm
  const float* data;
  int rows;
  int width;
  int stride;
};

// Receives, in order, every tensor of a Forward pass listed in Activation:
// the embedding output, then per layer the attention norm, q, k, v, (Llama/
// Qwen2) the rotated q and k, the attention-weighted values, the attention
// output, the residual after attention, the MLP norm, the MLP activation, the
// MLP output and the residual after the MLP, and last the final-norm output.
// Observers copy what they need (e.g. SparsePO's mask inputs or MaPO's
// activation maps, docs/objectives.md §2).
class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  virtual void Observe(const ActivationView& view) = 0;
};

// Upper bounds that size the activation memory, allocated once up front so that
// the steady-state step allocates nothing.
struct Capacity {
  int max_rows = 0;     // tokens in one packed batch
  int max_seq_len = 0;  // longest sequence
  int max_seqs = 0;     // sequences in one packed batch
  // The parameter and gradient buffers are zero-padded to a multiple of this
  // many floats (ZeRO-1 splits them into equal shards, one per rank).
  int param_multiple = 1;
  // Activation recomputation (trainable decoders only): Forward keeps each
  // block's output (the next block's input, [max_rows, C]) and one block's
  // worth of activation buffers; Backward reruns each block's forward from
  // its saved input before that block's backward. Same kernels on the same
  // inputs, so the gradients are bitwise those of the stored path.
  bool activation_checkpointing = false;
  // Floats the caller will allocate beside the model for the output layer
  // and the objective (objectives::OutputLayerFloats, SparsePO's mask
  // inputs): CheckModelFitsInMemory counts them with the model's own buffers,
  // before anything is allocated.
  size_t objective_floats = 0;
};

// LoRA (docs/lora.md): low-rank adapters on `modules`. Each adapted linear
// layer computes y = W x + scaling * B (A drop(x)), A [r, in], B [out, r];
// the base weights are frozen and only the adapters train. No modules: no
// LoRA.
struct LoraOptions {
  std::vector<lora::LinearModule> modules;  // ResolveTargetModules order
  int r = 8;
  float scaling = 1.0f;  // lora_alpha / r, or / sqrt(r) with use_rslora
  float dropout = 0.0f;  // lora_dropout, in [0, 1)
  // model.base_dtype: WEIGHT_BF16 (docs/lora.md): the frozen linear weights of
  // the blocks held in bf16 (rounded to nearest even when loaded) and widened
  // to fp32 one block at a time where they are used; the embeddings, norms
  // and biases stay fp32, and so does all the math.
  bool base_bf16 = false;

  bool enabled() const { return !modules.empty(); }
};

// Where one adapter's factors live in a LoRA decoder's parameter buffer
// (Decoder::params(), row-major, PEFT's shapes).
struct LoraAdapterRef {
  lora::LinearModule module;
  size_t a = 0;  // lora_A.weight [r, in_features]
  size_t b = 0;  // lora_B.weight [out_features, r]
};

// A half-open range of the flat parameter buffer, in floats.
struct ParamRange {
  size_t begin = 0;
  size_t end = 0;
};

class Decoder;

// OK when a Decoder of `spec` with `capacity` (and, when `trainable`, its
// gradients, AdamW moments and backward buffers) fits in `available` bytes
// (nullopt: unknown, OK); else ResourceExhausted with the bytes needed and
// available. `attention_floats`: what each block's attention saves for its
// backward (Backend::MaxAttentionProbsSize); nullopt counts the softmax
// probabilities, n_head * max_seq_len * max_rows.
// Saturating arithmetic: no size read from a file can overflow it.
// With LoRA (`lora` enabled) only the adapters have gradients and moments.
absl::Status CheckModelFitsInMemory(
    const io::ModelSpec& spec, const Capacity& capacity, bool trainable,
    std::optional<uint64_t> available, const LoraOptions& lora = {},
    std::optional<uint64_t> attention_floats = std::nullopt);

// The keys and values of the tokens one sequence has seen so far, for
// incremental decoding (Decoder::ForwardIncremental): per layer, up to
// max_len rows of q|k|v in backend memory. Made by Decoder::NewKvCache and
// tied to that decoder.
class KvCache {
 public:
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Tokens cached so far.
  int length() const { return length_; }
  int max_len() const { return max_len_; }
  // Forgets every token, to start another sequence.
  void Clear() { length_ = 0; }

 private:
  friend class Decoder;
  KvCache(kernels::Backend* backend, std::vector<float*> layers, int max_len)
      : backend_(backend), layers_(std::move(layers)), max_len_(max_len) {}

  kernels::Backend* backend_;
  std::vector<float*> layers_;  // [max_len, (NH + 2*NKV)*hs] per layer
  int max_len_;
  int length_ = 0;
};

class Decoder {
 public:
  // Lays out the parameters of `spec` and allocates them (and, when trainable,
  // their gradients and the backward buffers) on `backend`. Parameters start
  // zeroed: call LoadHf or InitRandom. On a host-memory backend, a model that
  // does not fit in the available memory (CheckModelFitsInMemory) is refused
  // before anything is allocated.
  //
  // With `lora` enabled (trainable decoders only) the trainable parameters
  // are the adapters: params(), grads(), layout(), padded_param_count() and
  // layer_range() describe the adapter factors (block by block, each block's
  // contiguous), while the base weights live in base_params() with no
  // gradient (with LoraOptions::base_bf16, the blocks' linear weights in
  // bf16). Adapters start zeroed: call InitAdapters (or fill params()).
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(
      const io::ModelSpec& spec, kernels::Backend* backend,
      const Capacity& capacity, bool trainable, const LoraOptions& lora = {});
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // Loads every parameter from a Hugging Face weight store (the parts of a
  // fused tensor from their own Hugging Face tensors). Errors name the tensor
  // and the file: a missing tensor, a shape mismatch, a NaN or infinite
  // value (with its index), a tensor the model does not use (with the
  // config.json setting that disagrees; buffers transformers recomputes are
  // skipped), and a lm_head.weight that differs from the embedding it is
  // tied to.
  absl::Status LoadHf(const io::WeightStore& store);
  // From-scratch initialization as transformers does for the architecture:
  // weights and embeddings N(0, init_std^2) (GPT-2's residual projections
  // scaled by 1/sqrt(2 * n_layer)), biases 0, normalization weights 1 (and
  // LayerNorm biases 0).
  void InitRandom(uint64_t seed, float init_std);
  // PEFT's LoRA initialization: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's
  // kaiming_uniform_ with a = sqrt(5)), B = 0, so the adapted model starts
  // as the base model.
  void InitAdapters(uint64_t seed);

  // LoRA decoders: whether Forward applies the adapters (default true). Off,
  // the decoder is the base model bitwise: the reference (docs/lora.md).
  void set_adapters_enabled(bool enabled) { adapters_enabled_ = enabled; }
  bool adapters_enabled() const { return adapters_enabled_; }
  // LoRA decoders: the adapter factors the reference model runs with
  // (backend memory in layout()'s layout, not owned, outliving their use): a
  // frozen copy of the adapter a run started from, TRL's reference for a
  // model that already holds an adapter (docs/lora.md). Null (the default):
  // the reference is the base model, adapters off.
  void set_reference_adapters(const float* factors) {
    reference_adapters_ = factors;
  }
  const float* reference_adapters() const { return reference_adapters_; }
  // While on, Forward computes the reference model: the reference adapters
  // (without dropout), or none. Off (the default): the policy.
  void set_reference_mode(bool on) { reference_mode_ = on; }
  // LoRA decoders with lora_dropout > 0: while a seed is set, Forward drops
  // each adapter's input with an inverted-dropout mask drawn from (seed,
  // block, adapter), so the same seed gives the same masks (training
  // forwards only; nullopt, the default: no dropout).
  void set_lora_dropout_seed(std::optional<uint64_t> seed) {
    dropout_seed_ = seed;
  }
  bool has_lora() const { return lora_.enabled(); }
  const LoraOptions& lora() const { return lora_; }
  // Each adapter's factors in params(), in LoraOptions::modules order.
  std::vector<LoraAdapterRef> lora_adapters() const;

  // Runs the model over `batch` and returns the final hidden states [N, C]
  // (backend memory, valid until the next Forward).
  const float* Forward(const PackedBatch& batch);
  // A key/value cache for one sequence of up to `max_len` tokens; max_len may
  // not exceed capacity().max_seq_len (the rotary tables' length). On a
  // host-memory backend, a cache beyond the available memory is refused
  // (ResourceExhausted) before it is allocated.
  absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int max_len) const;
  // Incremental decoding: runs the model over `tokens`, the next tokens of
  // the sequence whose earlier tokens are in `cache` (made by this decoder's
  // NewKvCache), appends their keys and values to the cache and returns
  // their final hidden states [tokens.size(), C] (backend memory, valid until
  // the next forward). Equals those rows of Forward over the whole sequence,
  // without recomputing the cached tokens. Requires 1 <= tokens.size() <=
  // capacity().max_rows and room in the cache. Overwrites the activations a
  // Backward would use.
  const float* ForwardIncremental(absl::Span<const int32_t> tokens,
                                  KvCache* cache);
  // Backpropagates dhidden() (the gradient w.r.t. Forward's output, filled by
  // the caller) through the model for the batch of the last Forward,
  // accumulating into grads(). Trainable models only.
  void Backward(const PackedBatch& batch);
  // Called during Backward when transformer block `layer`'s gradients are
  // complete (blocks finish from the last to the first), so that their
  // all-reduce can overlap the rest of the backward pass.
  using GradsReadyFn = std::function<void(int layer, ParamRange range)>;
  void set_grads_ready_callback(GradsReadyFn fn) {
    grads_ready_ = std::move(fn);
  }
  // The parameters of transformer block `layer` (contiguous in the buffer).
  ParamRange layer_range(int layer) const { return layer_ranges_[layer]; }
  // Floats in the parameter (and gradient) buffer, padding included.
  size_t padded_param_count() const { return padded_params_; }

  // [max_rows, C] buffer for the gradient w.r.t. the final hidden states.
  float* dhidden() { return dhidden_; }
  // Every later Forward reports its activations to `observer` (not owned;
  // null: none, the default). Observing does not change the results.
  void set_observer(ActivationObserver* observer) { observer_ = observer; }

  const io::ModelSpec& spec() const { return spec_; }
  // The trainable parameters: the whole model, or with LoRA the adapters.
  const ParamLayout& layout() const {
    return lora_.enabled() ? adapter_layout_ : layout_;
  }
  kernels::Backend* backend() const { return backend_; }
  float* params() { return params_; }
  const float* params() const { return params_; }
  float* grads() { return grads_; }
  const float* grads() const { return grads_; }
  // The model's weights (the base model's with LoRA), in base_layout().
  // Null with a bf16 base (LoraOptions::base_bf16): read them with
  // CopyBaseToHost.
  const ParamLayout& base_layout() const { return layout_; }
  float* base_params() { return base_bf16_ == nullptr ? base_ : nullptr; }
  const float* base_params() const {
    return base_bf16_ == nullptr ? base_ : nullptr;
  }
  // Copies the model's weights, in base_layout() (base_layout().total()
  // floats), to host memory `host`: a bf16 base widened to fp32.
  void CopyBaseToHost(float* host) const;
  // Whether base tensor `t` (of base_layout()) is held in bf16: with
  // LoraOptions::base_bf16 the blocks' linear weights, else none.
  bool IsHeldInBf16(const ParamTensor& t) const;
  // Bytes of backend memory the base weights take: with a bf16 base, the
  // fp32 tensors, the bf16 ones and the fp32 scratch one block's weights are
  // widened into.
  size_t base_bytes() const { return base_bytes_; }
  // The [V, C] output embedding (tied to the input embedding when the spec
  // says so) and its gradient (null with LoRA: the base is frozen).
  const float* output_embedding() const { return base_ + wout_offset_; }
  float* output_embedding_grad() {
    return base_grads_ == nullptr ? nullptr : base_grads_ + wout_offset_;
  }
  int hidden_size() const { return spec_.hidden; }
  int vocab_size() const { return spec_.vocab_size; }
  const Capacity& capacity() const { return capacity_; }

 private:
  struct LayerOffsets;
  struct LayerActs;
  // The four linear layers of a block an adapter can add into.
  enum class Slot { kQkv, kAttentionOut, kMlpIn, kMlpOut };
  struct Adapter;

  Decoder(const io::ModelSpec& spec, kernels::Backend* backend,
          const Capacity& capacity, bool trainable, const LoraOptions& lora);
  // Offset of a tensor the architecture does not have (an absent bias).
  static constexpr size_t kAbsent = ~size_t{0};

  void BuildLayout();
  // The adapters' tensors, buffers and per-block ranges (LoRA only).
  void BuildAdapters();
  void AllocateActivations();
  // Adds block `layer`'s adapters on `slot` into `out` ([N, slot width], the
  // linear layer's output) from the layer's input `inp` [N, in].
  // `recompute`: Backward's rerun, which reuses the dropout masks.
  // Sets forward_used_adapters_ and forward_adapters_ for the next forward
  // from the adapter switch and the reference mode.
  void SelectForwardAdapters();
  void AdaptersForward(int layer, Slot slot, float* out, const float* inp,
                       int N, bool recompute);
  // Their backward: adapter gradients from `dout` into grads(), and the
  // input gradient accumulated into `dinp`.
  void AdaptersBackward(int layer, Slot slot, float* dinp, const float* dout,
                        const float* inp, int N);
  // Block `layer`'s forward from `residual` (its input) into acts_[layer].
  // `recompute`: Backward's rerun under activation checkpointing, which
  // reports nothing to the observer and stops at the MLP activation (the
  // block's output is saved and the backward needs nothing after it).
  void BlockForward(int layer, const PackedBatch& batch, const float* residual,
                    bool recompute);
  // a.act = GELU(a.fc), or SwiGLU of its gate|up halves, for N rows.
  void MlpActivation(const LayerActs& a, int N);
  // A bf16 base: lays out the bf16 tensors block by block and the fp32 ones
  // in a compact buffer, and moves every offset the passes use there.
  void BuildBf16Base();
  // Writes n floats of the base at base_layout() offset `offset` (inside one
  // tensor) from host memory, rounding a bf16 tensor's to nearest even.
  void StoreBase(size_t offset, const float* host, size_t n);
  // A bf16 base: widens block `layer`'s linear weights into widened_ (once:
  // a block already there is kept).
  void WidenBlock(int layer);
  // A base tensor's parameters or gradient; null for kAbsent (and every
  // gradient with LoRA).
  float* P(size_t offset) {
    return offset == kAbsent ? nullptr : base_ + offset;
  }
  float* G(size_t offset) {
    return offset == kAbsent || base_grads_ == nullptr ? nullptr
                                                       : base_grads_ + offset;
  }
  // A block's linear weight: with a bf16 base in widened_, which WidenBlock
  // filled for that block.
  const float* W(size_t offset) const {
    return (base_bf16_ != nullptr ? widened_ : base_) + offset;
  }
  // LayerNorm (GPT-2, with bias) or RMSNorm (Llama/Qwen2, bias kAbsent).
  void NormForward(float* out, float* mean, float* rstd, const float* inp,
                   size_t weight, size_t bias, int N);
  void NormBackward(float* dinp, const float* dout, const float* inp,
                    size_t weight, size_t bias, const float* mean,
                    const float* rstd, int N);
  // Hands a view to the observer, if one is set.
  void Observe(Activation kind, int layer, const float* data, int rows,
               int width, int stride) {
    if (observer_ != nullptr) {
      observer_->Observe({kind, layer, data, rows, width, stride});
    }
  }

  io::ModelSpec spec_;
  kernels::Backend* backend_;
  Capacity capacity_;
  bool trainable_;
  // Llama/Qwen2 (RMSNorm, RoPE, SwiGLU) rather than GPT-2.
  bool llama_family_;
  ParamLayout layout_;
  size_t wte_offset_ = 0, wpe_offset_ = kAbsent, wout_offset_ = 0;
  size_t lnf_w_ = 0, lnf_b_ = kAbsent;
  std::vector<LayerOffsets> layer_offsets_;
  std::vector<ParamRange> layer_ranges_;
  size_t padded_params_ = 0;
  GradsReadyFn grads_ready_;
  // Per block; under activation checkpointing every block's entry shares one
  // set of buffers except its output (res3).
  std::vector<LayerActs> acts_;
  ActivationObserver* observer_ = nullptr;

  // The base weights; without LoRA also the trainable params_ (and
  // base_grads_ the grads_); with LoRA base_grads_ is null.
  float* base_ = nullptr;
  float* base_grads_ = nullptr;
  // A bf16 base: base_ holds the fp32 tensors only (compacted; the offsets
  // above, wte_offset_ to layer_offsets_' norms and biases, point there),
  // base_bf16_ the blocks' linear weights block by block, and widened_ one
  // block's of them in fp32 (layer_offsets_' weight offsets are inside it).
  uint16_t* base_bf16_ = nullptr;
  float* widened_ = nullptr;
  int widened_layer_ = -1;  // the block in widened_, -1 for none
  // Per block: the first bf16 value and the count.
  std::vector<std::pair<size_t, size_t>> bf16_blocks_;
  // Per base_layout() tensor: where it is held (base_ or base_bf16_).
  std::vector<size_t> held_offset_;
  std::vector<bool> held_bf16_;
  size_t base_bytes_ = 0;
  float* params_ = nullptr;
  float* grads_ = nullptr;
  // LoRA.
  LoraOptions lora_;
  ParamLayout adapter_layout_;
  std::vector<std::vector<Adapter>> adapters_;  // per block
  bool adapters_enabled_ = true;
  const float* reference_adapters_ = nullptr;
  bool reference_mode_ = false;
  std::optional<uint64_t> dropout_seed_;
  // What the last Forward did, for Backward.
  bool forward_used_adapters_ = false;
  // The adapter factors the last Forward used: params_ or
  // reference_adapters_.
  const float* forward_adapters_ = nullptr;
  bool forward_used_dropout_ = false;
  float* lora_input_ = nullptr;    // [max_rows, widest in]: the dropped input
  float* lora_dinput_ = nullptr;   // [max_rows, widest in]
  float* lora_delta_ = nullptr;    // [max_rows, widest slot]: B (s A x)
  float* lora_dh_ = nullptr;       // [max_rows, r]
  float* lora_db_wide_ = nullptr;  // [widest slot, r]
  std::vector<float*> owned_;  // every backend allocation, freed at destruction

  // RoPE cos/sin tables [max_seq_len, head_dim/2] (Llama/Qwen2).
  float* rope_cos_ = nullptr;
  float* rope_sin_ = nullptr;
  // Forward activations shared across layers.
  float* encoded_ = nullptr;  // embedding output = residual stream into layer 0
  float* lnf_ = nullptr;      // final hidden states
  float* lnf_mean_ = nullptr;  // LayerNorm only
  float* lnf_rstd_ = nullptr;
  float* branch_out_ = nullptr;  // a block's attention or MLP output
  // ForwardIncremental's positions (host).
  std::vector<int32_t> positions_;
  // Backward scratch.
  float* dhidden_ = nullptr;
  float* dresidual_ = nullptr;
  float* dscratch_c_ = nullptr;    // [rows, C]
  float* dscratch_qkv_ = nullptr;  // [rows, qkv width]
  float* dscratch_att_ = nullptr;  // [rows, n_head * head_dim]
  float* dscratch_ff_ = nullptr;   // [rows, intermediate]
  float* dscratch_fc_ = nullptr;   // [rows, MLP input projection width]
};

}  // namespace prefopt::model

#endif  // PREFOPT_TRAINER_MODEL_DECODER_H_
