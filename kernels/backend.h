// The numeric core's interface: every op the models, objectives and optimizer
// need, with a Forward and a Backward where training needs one. The model and
// the training loop are written once against this interface; kernels/cpu
// implements it in fp32 (the reference), kernels/cuda on the GPU.
//
// Conventions shared by every op:
// - Pointers are to backend memory (host memory for the CPU backend),
//   row-major.
// - A batch is a set of sequences packed back to back without padding: N rows
//   in all, sequence s occupying rows
//   [spans[s].start, spans[s].start + spans[s].len). Attention never crosses a
//   sequence boundary.
// - Every Backward *accumulates* (+=) into its gradient outputs, parameters and
//   activations alike, so gradient accumulation and residual branches need no
//   extra adds; callers zero gradient buffers where a fresh value is wanted.
//   The one exception is RopeBackward, which rotates its buffer in place.
// - A null gradient output pointer means that gradient is not needed.
#ifndef PREFOPT_KERNELS_BACKEND_H_
#define PREFOPT_KERNELS_BACKEND_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

// Marks functions that the host and CUDA kernels both call.
#if defined(__CUDACC__)
#define PREFOPT_HOST_DEVICE __host__ __device__
#else
#define PREFOPT_HOST_DEVICE
#endif

namespace prefopt::kernels {

// One sequence inside a packed batch.
struct SeqSpan {
  int start;  // first row
  int len;    // number of rows (tokens)
};

// Sequences of max_seq_len rows filling max_rows (the last one shorter): of all
// batches of at most max_rows rows in sequences of at most max_seq_len, the one
// with the most attention pairs (sum of len^2).
inline std::vector<SeqSpan> FullestBatch(int max_rows, int max_seq_len) {
  std::vector<SeqSpan> spans;
  for (int start = 0; start < max_rows; start += max_seq_len) {
    spans.push_back({start, std::min(max_seq_len, max_rows - start)});
  }
  return spans;
}

// Hyper-parameters of one AdamW step over one tensor.
struct AdamWParams {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;  // decoupled: p -= lr * weight_decay * p
  int step;            // 1-based, for bias correction
};

// ---- objectives on the device (docs/objectives.md §7) ----
// The objectives whose per-token coefficients the backend computes from pass
// 1's per-row values: DPO's per-pair losses (docs/objectives.md §1; TRL's
// names) with f-DPO's scores, LD-DPO's and WPO's weights, a mean over response
// tokens (SFT, §5), implicit-reward SFT at both granularities (§3) and PRIOR's
// token weights (§4), the reference-free preference objectives CPO (with
// SimPO and AlphaPO) and ORPO with their chosen-response NLL terms (§8), and
// KTO with its pre-pass (§9).
enum class PairLoss : int32_t {
  kSigmoid,  // with label_smoothing: cDPO
  kSigmoidNorm,
  kHinge,
  kIpo,
  kRobust,
  kExoPair,
  kDiscopop,
  kNcaPair,
  kBcoPair,
  kSppoHard,
  kApoZero,
  kApoDown,
  // Sorted over the micro-batch's pairs (objective_math::AddSortedLoss).
  kAot,
  kAotUnpaired,
};

enum class ObjectiveKind : int32_t {
  kPreference,  // sequences 2i, 2i+1 are pair i's chosen and rejected
  kTokenMean,   // −Σ ℓ_t over the global batch's response tokens
  // Implicit-reward SFT at sequence granularity (docs/objectives.md §3):
  // −φ(β(L − L̃)) per sequence.
  kImplicitSequence,
  // Implicit-reward SFT at token granularity: −Σ_t φ(β(ℓ_t − ℓ̃_t)) per
  // sequence; reads the reference's per-token log-probs.
  kImplicitToken,
  // PRIOR (docs/objectives.md §4): −Σ_t ŵ_t·ℓ_t over the global batch's
  // response tokens, ŵ from the reference's per-token log-probs.
  kPrior,
  // CPO, SimPO and AlphaPO (docs/objectives.md §8): a preference loss on the
  // policy's own log-probs of sequences 2i, 2i+1 plus nll_weight times the
  // chosen responses' NLL; no reference.
  kCpo,
  // ORPO (§8): the odds-ratio loss of sequences 2i, 2i+1 plus the NLL of the
  // chosen sequence, prompt included; the caller orders the sequences in
  // units of three, [chosen, rejected, chosen prompt] (the prompt's rows
  // predict its tokens 2..P).
  kOrpo,
  // KTO and APO_ZERO_UNPAIRED (docs/objectives.md §9) on unpaired examples,
  // one sequence each: `reference` holds two values per sequence, L̃ and 1
  // for a desirable example (0: undesirable); z₀ is kto_kl.
  kKto,
  // KTO's pre-pass: each KL completion's L − L̃ into the "kl" sum, for z₀;
  // its coefficients are 0 (no gradient flows through z₀).
  kKtoKl,
};

// CPO's preference losses (TRL's CPOConfig.loss_type; AlphaPO is kSimpo with
// reward_alpha ≠ 0).
enum class CpoLoss : int32_t {
  kSigmoid,  // with label_smoothing
  kHinge,
  kIpo,
  kSimpo,  // sigmoid on length-averaged log-probs with the margin γ/β
};

// Implicit-reward SFT's f-divergences (docs/objectives.md §3).
enum class ImplicitDivergence : int32_t {
  kTotalVariation,
  kPearsonChi2,
  kNeymanChi2,
  kKl,
  kSquaredHellinger,
  kJensenShannon,
};

// f-DPO's score of a log-ratio (docs/objectives.md §1).
enum class ScoreDivergence : int32_t {
  kReverseKl,
  kForwardKl,
  kJsDivergence,
  kAlphaDivergence,
};

inline constexpr int kMaxPairLossTerms = 8;

struct ObjectiveParams {
  ObjectiveKind kind = ObjectiveKind::kPreference;
  // kPreference: Σ_k weight[k]·loss[k] (MPO's mixture).
  int32_t num_terms = 0;
  PairLoss loss[kMaxPairLossTerms] = {};
  double weight[kMaxPairLossTerms] = {};
  double beta = 0.1;
  double label_smoothing = 0;
  double discopop_tau = 0.05;
  // f-DPO: the score f(r) the losses on the score difference read, and
  // ALPHA_DIVERGENCE's α.
  ScoreDivergence score = ScoreDivergence::kReverseKl;
  double score_alpha = 0.5;
  // LD-DPO's α_ld: a pair's tokens after the shorter response's length count
  // α_ld times in L (the caller's L̃ are weighted alike); < 0: plain sums.
  double ld_alpha = -1;
  // WPO: each pair's loss and gradient times exp(mean_t(ℓ_t − log Σ p²)) of
  // both responses (reads log_sum_sq_probs).
  bool use_weighting = false;
  // DPO's SFT term: its weight, and the pairs per chosen token that turn its
  // token mean into Loss's per-pair units (trainer/objectives/dpo.cc).
  double sft_weight = 0;
  double pairs_per_token = 0;
  // kImplicitSequence, kImplicitToken: the divergence and its domain margin
  // (β is `beta`).
  ImplicitDivergence divergence = ImplicitDivergence::kTotalVariation;
  double domain_margin = 1e-2;
  // kPrior: α of w_t = (1 − p̃_t)^α and the weight sums' floor ε.
  double prior_alpha = 1;
  double weight_sum_floor = 1e-6;
  // kCpo: the loss (β is `beta`, ε `label_smoothing`), SimPO's γ, AlphaPO's
  // reward shape α (0: the plain log-prob) and cpo_alpha, the NLL term's
  // weight (0: no NLL term, as TRL).
  CpoLoss cpo_loss = CpoLoss::kSigmoid;
  double simpo_gamma = 0.5;
  double reward_alpha = 0;
  double nll_weight = 0;
  // kCpo, kOrpo: the global batch's token count the NLL term is a mean over
  // (Objective::TokenDenominator).
  double token_denominator = 0;
  // kKto: z₀ (the pre-pass's clamped mean; 0 with kto_apo), the loss
  // weights of desirable and undesirable examples, and APO_ZERO_UNPAIRED's
  // loss in place of KTO's.
  double kto_kl = 0;
  double desirable_weight = 1;
  double undesirable_weight = 1;
  bool kto_apo = false;
  // The global batch's denominator every coefficient is divided by.
  double denominator = 1;
};

// How many consecutive sequences form one unit of `params`' math: a pair
// (kPreference, kCpo), a pair and its chosen prompt (kOrpo), or one sequence.
inline int SequencesPerUnit(const ObjectiveParams& params) {
  switch (params.kind) {
    case ObjectiveKind::kPreference:
    case ObjectiveKind::kCpo:
      return 2;
    case ObjectiveKind::kOrpo:
      return 3;
    default:
      return 1;
  }
}
inline constexpr int kMaxSequencesPerUnit = 3;

// How many doubles ObjectiveCoefficients' `reference` holds per sequence: 0
// where it is not read, 2 for kKto (L̃ and the label), else 1 (L̃).
inline int ReferenceValuesPerSequence(const ObjectiveParams& params) {
  switch (params.kind) {
    case ObjectiveKind::kPreference:
    case ObjectiveKind::kImplicitSequence:
    case ObjectiveKind::kKtoKl:
      return 1;
    case ObjectiveKind::kKto:
      return 2;
    default:
      return 0;
  }
}

// Whether `params` reads per-token reference log-probs
// (ObjectiveCoefficients' reference_tokens).
inline bool NeedsReferenceTokens(const ObjectiveParams& params) {
  return params.kind == ObjectiveKind::kImplicitToken ||
         params.kind == ObjectiveKind::kPrior;
}

// The metric sums ObjectiveCoefficients adds to, one double each (their
// counts are the caller's: pairs, tokens, tokens × V).
enum ObjectiveMetric : int32_t {
  kMetricLoss,
  kMetricRewardsChosen,
  kMetricRewardsRejected,
  kMetricRewardsMargins,
  kMetricRewardsAccuracies,
  kMetricLogpsChosen,
  kMetricLogpsRejected,
  kMetricLogitsChosen,
  kMetricLogitsRejected,
  kMetricMeanTokenAccuracy,
  kMetricRankingAccuracy,
  kMetricRankingAccuracyLenNorm,
  kMetricEntropy,
  kMetricIsftWeight,
  kMetricIsftReward,
  kMetricIsftClamped,
  kMetricLogpsPolicy,
  kMetricLogpsReference,
  kMetricSftLoss,
  kMetricPriorLoss,
  kMetricPriorWeightMax,
  kMetricPriorWeightEntropy,
  kMetricNllLoss,
  kMetricLogOddsRatio,
  kMetricLogOddsChosen,
  kMetricKl,
  kObjectiveMetricCount,
};

// SparsePO's two output layers over the same N rows (Backend::
// SparsePoOutputForward). The reference has its own final hidden states and
// output embedding (it may be a different model with the same vocabulary),
// and never receives a gradient.
struct SparsePoOutputLayers {
  const float* h;     // policy rows [N, C]
  const float* wout;  // policy output embedding [V, C]
  int C;
  const float* ref_h;     // reference rows [N, ref_C]
  const float* ref_wout;  // reference output embedding [V, ref_C]
  int ref_C;
  int V;
};

// Per-row outputs of SparsePoOutputForward, each [N]. The logit sums (for the
// logits/* metrics and MaPO's logits map) and the entropy may be null when not
// needed.
struct SparsePoRowStats {
  float* lse;       // logsumexp(z)
  float* ref_lse;   // logsumexp(z̃)
  float* logp;      // ℓ = z[y] − lse(z)
  float* ref_logp;  // ℓ̃ = z̃[y] − lse(z̃)
  float* kl;  // K = Σ_v p_v (z_v − z̃_v) − (lse z − lse z̃) ≤ 0
  float* logit_sum;      // Σ_v z_v, or null
  float* ref_logit_sum;  // Σ_v z̃_v, or null
  float* entropy;  // −Σ_v π_v log π_v (TRL's entropy metric), or null
};

// SparsePO's pair objective (docs/objectives.md §2) as Backend::
// SparsePoCoefficients computes it: β, the L1 weights c_u and c_d, which
// terms are masked and whether one mask serves both, and the global batch's
// pair count every output is divided by.
struct SparsePoParams {
  double beta = 0.8;
  double l1_reward = 0;
  double l1_kl = 0;
  bool common_mask = true;
  bool mask_on_reward = true;
  bool mask_on_kl = true;
  double denominator = 1;
};

// The metric sums SparsePoCoefficients adds to, one double each; their counts
// (pairs, response tokens, tokens × V) are the caller's. "Mask" is the common
// mask, or m^u with independent masks; "kl mask" is m^d with independent
// masks.
enum SparsePoMetric : int32_t {
  kSparsePoLoss,
  kSparsePoRewardsChosen,
  kSparsePoRewardsRejected,
  kSparsePoRewardsMargins,
  kSparsePoRewardsAccuracies,
  kSparsePoLogpsChosen,
  kSparsePoLogpsRejected,
  kSparsePoLogitsChosen,
  kSparsePoLogitsRejected,
  kSparsePoKlChosen,
  kSparsePoKlRejected,
  kSparsePoKlUnmaskedChosen,
  kSparsePoKlUnmaskedRejected,
  kSparsePoMaskZeros,
  kSparsePoMaskSum,
  kSparsePoMaskL1,
  kSparsePoKlMaskZeros,
  kSparsePoKlMaskSum,
  kSparsePoKlMaskL1,
  kSparsePoEntropy,
  kSparsePoMetricCount,
};

// SparsePoCoefficients' per-row inputs over the response rows, each [rows]:
// pass 1's values (SparsePoRowStats) and the masks. mask_kl is read with
// independent masks and mask_on_kl only; mask_reward unless independent masks
// leave the reward unmasked.
struct SparsePoRowInputs {
  const float* logp;
  const float* ref_logp;
  const float* kl;
  const float* logit_sum;
  const float* entropy;
  const float* mask_reward;
  const float* mask_kl;
};

// SparsePoCoefficients' per-row outputs, each [rows]: the logit gradient's
// coefficients A and B, and the gradients w.r.t. the masks (dmask_reward for
// the common mask or m^u, dmask_kl for m^d; each written where its mask is
// read, and may be null otherwise).
struct SparsePoRowOutputs {
  float* coef_a;
  float* coef_b;
  float* dmask_reward;
  float* dmask_kl;
};

// SparsePO's learned mask network (docs/objectives.md §2, "Learned") over
// the hidden states of `layers` layers of `hidden` channels:
//   m_t = ReLU(Σ_l c_l · ReLU(w_lᵀ LN(h_{l,t}) + b_l)),
// one LayerNorm (epsilon `eps`) shared by the layers. Its parameters are one
// array: LN weight [H], LN bias [H], w_0 … w_{L−1} [H each], b [L], c [L],
// each starting at a multiple of 16 floats (model::ParamLayout's alignment;
// the gaps are never read).
struct SparsePoMaskNetShape {
  int layers;
  int hidden;
  float eps;

  PREFOPT_HOST_DEVICE static size_t Aligned(size_t n) {
    return (n + 15) / 16 * 16;
  }
  PREFOPT_HOST_DEVICE size_t ln_weight() const { return 0; }
  PREFOPT_HOST_DEVICE size_t ln_bias() const { return Aligned(hidden); }
  PREFOPT_HOST_DEVICE size_t w(int l) const {
    return static_cast<size_t>(2 + l) * Aligned(hidden);
  }
  PREFOPT_HOST_DEVICE size_t b() const { return w(layers); }
  PREFOPT_HOST_DEVICE size_t c() const { return b() + Aligned(layers); }
  PREFOPT_HOST_DEVICE size_t params() const { return c() + layers; }
};

// MaPO's groups of activation maps (docs/objectives.md §2, "MaPO"), as
// Backend::MapoMask reads them.
enum class MapoGroup : int32_t {
  kMlp,     // the MLP activation of every layer (not captured for GPT-2)
  kAttn,    // the attention block's q, k, v and weighted values of every layer
  kResid,   // the residual stream, the norms' outputs and the blocks' outputs
  kLogits,  // the reference logits (a_t = their mean over the vocabulary)
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string Name() const = 0;

  // ---- memory ----
  // Allocates n floats (uninitialized). Freed with Free.
  virtual float* Alloc(size_t n) = 0;
  virtual void Free(float* p) = 0;
  virtual void Zero(float* p, size_t n) = 0;
  virtual void CopyToDevice(float* dst, const float* host_src, size_t n) = 0;
  virtual void CopyToHost(float* host_dst, const float* src, size_t n) = 0;
  // dst[0..n) = src[0..n), both backend memory, not overlapping.
  virtual void Copy(float* dst, const float* src, size_t n) = 0;
  // Whether host code may read and write backend memory directly (the CPU
  // backend's is host memory; a GPU's is not).
  virtual bool HostAddressable() const { return true; }

  // ---- embeddings ----
  // out[n,:] = wte[ids[n],:] + (wpe ? wpe[pos[n],:] : 0). ids/pos are host
  // arrays.
  virtual void EmbeddingForward(float* out, const int32_t* ids,
                                const int32_t* pos, const float* wte,
                                const float* wpe, int N, int C) = 0;
  virtual void EmbeddingBackward(float* dwte, float* dwpe, const float* dout,
                                 const int32_t* ids, const int32_t* pos, int N,
                                 int C) = 0;

  // ---- normalization ----
  // out = (inp - mean) * rstd * weight + bias, over the last dim C.
  // mean[N], rstd[N] are saved for Backward. bias may be null.
  virtual void LayerNormForward(float* out, float* mean, float* rstd,
                                const float* inp, const float* weight,
                                const float* bias, int N, int C, float eps) = 0;
  virtual void LayerNormBackward(float* dinp, float* dweight, float* dbias,
                                 const float* dout, const float* inp,
                                 const float* weight, const float* mean,
                                 const float* rstd, int N, int C) = 0;

  // RMSNorm (Llama/Qwen2): out = inp * rstd * weight over the last dim C, with
  // rstd = 1 / sqrt(mean(inp^2) + eps) per row, no mean subtraction and no
  // bias. rstd[N] is saved for Backward.
  virtual void RmsNormForward(float* out, float* rstd, const float* inp,
                              const float* weight, int N, int C, float eps) = 0;
  // With g = dout * weight: dinp += rstd * g - inp * rstd^3 * mean(g * inp),
  // dweight += sum over rows of dout * inp * rstd.
  virtual void RmsNormBackward(float* dinp, float* dweight, const float* dout,
                               const float* inp, const float* weight,
                               const float* rstd, int N, int C) = 0;

  // out[r] = the mean of in[r * stride + c] over c < width, r < N, summed in
  // at least fp32 per lane and double across lanes: per-row summaries of an
  // activation (SparsePO's MaPO masks read one per row and map).
  virtual void RowMeans(float* out, const float* in, int N, int width,
                        int stride) = 0;

  // ---- dense layers ----
  // out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] when bias is non-null).
  virtual void MatmulForward(float* out, const float* inp, const float* weight,
                             const float* bias, int N, int C, int OC) = 0;
  virtual void MatmulBackward(float* dinp, float* dweight, float* dbias,
                              const float* dout, const float* inp,
                              const float* weight, int N, int C, int OC) = 0;

  // ---- activations and residuals ----
  // GELU, tanh approximation (GPT-2's "gelu_new").
  virtual void GeluForward(float* out, const float* inp, size_t n) = 0;
  virtual void GeluBackward(float* dinp, const float* inp, const float* dout,
                            size_t n) = 0;
  // SwiGLU (Llama/Qwen2 MLP): gate_up[N, 2*FF] holds, per row, the FF gate
  // values and then the FF up values (the fused gate|up projection's output);
  // out[N, FF] = silu(gate) * up, silu(x) = x * sigmoid(x).
  virtual void SwiGluForward(float* out, const float* gate_up, int N,
                             int FF) = 0;
  // dgate_up[:, j] += dout[:, j] * up * silu'(gate) and
  // dgate_up[:, FF + j] += dout[:, j] * silu(gate), j < FF, with
  // silu'(x) = sigmoid(x) * (1 + x * (1 - sigmoid(x))).
  virtual void SwiGluBackward(float* dgate_up, const float* gate_up,
                              const float* dout, int N, int FF) = 0;
  // out = a + b.
  virtual void Add(float* out, const float* a, const float* b, size_t n) = 0;
  // y += alpha * x.
  virtual void Axpy(float* y, float alpha, const float* x, size_t n) = 0;
  // out = a * b, elementwise (out may be a or b): LoRA's dropout masks.
  virtual void Multiply(float* out, const float* a, const float* b,
                        size_t n) = 0;
  // out[i] = the fp32 value of the bf16 bits in[i] (exact: the bits shifted
  // into the high half, NaN payloads and signs kept). `in` is backend memory
  // holding n bf16 values: a LoRA decoder's frozen base held in bf16
  // (docs/lora.md).
  virtual void WidenBf16(float* out, const uint16_t* in, size_t n) = 0;

  // ---- attention ----
  // Causal multi-head attention with grouped KV heads (NKV divides NH; GPT-2
  // has NKV == NH). qkv[N, (NH + 2*NKV)*hs] holds, per row, the NH query heads,
  // then the NKV key heads, then the NKV value heads, each hs wide.
  // out[N, NH*hs]. Scale 1/sqrt(hs).
  // probs: what Forward saves for Backward, AttentionProbsSize() floats in a
  // layout of the backend's own: the softmax probabilities (ReferenceBackend,
  // NH * len^2 per sequence), only the per-row logsumexp (CudaBackend: N * NH),
  // from which Backward recomputes the probabilities, or either, chosen per
  // batch (CpuBackend). Nothing but Backward may read it.
  virtual size_t AttentionProbsSize(const SeqSpan* spans, int num_seqs,
                                    int NH) const = 0;
  // The largest AttentionProbsSize of any batch of at most max_rows rows in
  // sequences of at most max_seq_len: what a caller allocates once for every
  // batch. By default that of FullestBatch, the largest for a size that grows
  // with the sequences' lengths.
  virtual size_t MaxAttentionProbsSize(int max_rows, int max_seq_len,
                                       int NH) const {
    const std::vector<SeqSpan> fullest = FullestBatch(max_rows, max_seq_len);
    return AttentionProbsSize(fullest.data(), static_cast<int>(fullest.size()),
                              NH);
  }
  virtual void AttentionForward(float* out, float* probs, const float* qkv,
                                const SeqSpan* spans, int num_seqs, int NH,
                                int NKV, int hs) = 0;
  // out: Forward's output, which Backward may read (CpuBackend's tiled path
  // takes the softmax backward's row term rowsum(dP * P) as rowsum(dout *
  // out)).
  virtual void AttentionBackward(float* dqkv, const float* dout,
                                 const float* qkv, const float* out,
                                 const float* probs, const SeqSpan* spans,
                                 int num_seqs, int NH, int NKV, int hs) = 0;
  // Incremental decoding (forward only): the attention of the last n rows of
  // ONE sequence whose earlier rows are a key/value cache, without
  // recomputing the cached rows. qkv[past + n, (NH + 2*NKV)*hs] is the
  // sequence in AttentionForward's row layout; of rows [0, past) only the key
  // and value heads are read. New row past + i attends to rows [0, past + i].
  // out[n, NH*hs] equals rows [past, past + n) of AttentionForward over the
  // whole sequence.
  virtual void CachedAttentionForward(float* out, const float* qkv, int past,
                                      int n, int NH, int NKV, int hs) = 0;

  // ---- rotary position embedding (Llama/Qwen2) ----
  // Rotates, in place, the NH query heads and the NKV key heads of every row of
  // qkv[N, (NH + 2*NKV)*hs] (the layout of AttentionForward; the value heads
  // are left alone). hs is even; let h = hs/2. Row n is at position pos[n]
  // (host array; 0 <= pos[n] < the table's rows), and with
  // c = cos[pos[n]*h + i], s = sin[pos[n]*h + i], each head's pairs
  // (x[i], x[i+h]), i < h, become
  //   x[i]   <- x[i] * c - x[i+h] * s
  //   x[i+h] <- x[i+h] * c + x[i] * s
  // which is transformers' rotate_half convention (the first half of a head
  // pairs with its second half; not interleaved). cos and sin are tables
  // [max_pos, hs/2] in backend memory, filled by the model (they encode
  // rope_theta and rope_scaling).
  virtual void RopeForward(float* qkv, const int32_t* pos, const float* cos,
                           const float* sin, int N, int NH, int NKV,
                           int hs) = 0;
  // The backward of RopeForward: rotates the query and key heads of the
  // gradient dqkv[N, (NH + 2*NKV)*hs] in place by -theta (s replaced by -s
  // above), turning the gradient w.r.t. the rotated q, k into the gradient
  // w.r.t. the unrotated ones; value heads untouched. Unlike the other
  // Backward ops it transforms its buffer instead of accumulating into it, so
  // the buffer must hold only gradient that flows through the rotation.
  virtual void RopeBackward(float* dqkv, const int32_t* pos, const float* cos,
                            const float* sin, int N, int NH, int NKV,
                            int hs) = 0;

  // ---- chunked output layer (docs/objectives.md §7) ----
  // For rows h[N,C] and the output embedding wout[V,C], the logits of a row are
  // z = wout @ h[n]. The full [N,V] logits are never held: rows are processed
  // `chunk` at a time through `chunk_buf` (chunk*V floats).
  //
  // Pass 1 writes, per row: lse[n] = logsumexp(z),
  // logp[n] = z[labels[n]] - lse, logit_sum[n] = sum_v z[v] (for the logits/*
  // metrics), correct[n] = 1 if argmax(z) == labels[n] else 0,
  // entropy[n] = -sum_v p_v log p_v of p = softmax(z) (TRL's `entropy`
  // metric), and, unless log_sum_sq_probs is null, log_sum_sq_probs[n] =
  // log sum_v p_v^2 = logsumexp(2z) - 2 lse (WPO's weights).
  virtual void OutputForward(float* lse, float* logp, float* logit_sum,
                             int32_t* correct, float* entropy,
                             float* log_sum_sq_probs, const float* h,
                             const float* wout, const int32_t* labels, int N,
                             int C, int V, float* chunk_buf, int chunk) = 0;
  // Pass 2: with the per-row coefficient coef[n] (docs/objectives.md's G_t),
  // dz[n,v] = coef[n] * (softmax(z)[v] - 1[v == labels[n]]); then
  // dh += dz @ wout and dwout += dz^T @ h. Rows with coef == 0 may be skipped.
  virtual void OutputBackward(float* dh, float* dwout, const float* h,
                              const float* wout, const int32_t* labels,
                              const float* lse, const float* coef, int N, int C,
                              int V, float* chunk_buf, int chunk) = 0;

  // ---- SparsePO's two-model output layer (docs/objectives.md §2, §7) ----
  // The policy's and the frozen reference's logits of the same N rows,
  // `chunk` rows at a time through chunk_buf and ref_chunk_buf (chunk*V
  // floats each), reduced to SparsePoRowStats and discarded. Pointers are
  // backend memory except the host array labels[N].
  virtual void SparsePoOutputForward(const SparsePoOutputLayers& layers,
                                     const int32_t* labels, int N,
                                     float* chunk_buf, float* ref_chunk_buf,
                                     int chunk,
                                     const SparsePoRowStats& out) = 0;
  // Pass 2: with pass 1's lse and ref_lse and the per-row coefficients
  // coef_a[N], coef_b[N], the logit gradient
  //   dz[n,v] = A_n (π_{n,v} − 1[v = labels[n]]) + B_n (π_{n,v} − p_{n,v}),
  // π = softmax(z), p = softmax(z̃), accumulated as dh[N, C] += dz @ wout and
  // dwout[V, C] += dz^T @ h. Either output may be null; rows whose two
  // coefficients are 0 may be skipped.
  virtual void SparsePoOutputBackward(const SparsePoOutputLayers& layers,
                                      const int32_t* labels, int N,
                                      const float* lse, const float* ref_lse,
                                      const float* coef_a, const float* coef_b,
                                      float* chunk_buf, float* ref_chunk_buf,
                                      int chunk, float* dh, float* dwout) = 0;

  // ---- SparsePO's masks and coefficients (docs/objectives.md §2, §7) ----
  // The learned mask of `rows` rows into mask[rows]: hidden holds the L
  // layers' rows one layer after the other ([L, rows, H]); params is the
  // network's parameter array (SparsePoMaskNetShape).
  virtual void SparsePoMaskForward(float* mask, const float* hidden, int rows,
                                   const float* params,
                                   const SparsePoMaskNetShape& shape) = 0;
  // Given dmask[rows] = ∂loss/∂m for the same rows and parameters, adds the
  // parameter gradients into grads (shape.params() floats).
  virtual void SparsePoMaskBackward(float* grads, const float* dmask,
                                    const float* hidden, int rows,
                                    const float* params,
                                    const SparsePoMaskNetShape& shape) = 0;
  // MaPO's mask of each sequence's rows from per-row map scores: map i holds
  // scores[i * rows + r] for the `rows` rows and belongs to group
  // map_groups[i]. For each span (a sequence's rows), each map's scores are
  // rescaled over the span (z-normalized, then min-max, with the official
  // code's half-precision rounding; a map without ranking counts as all
  // ones), averaged within each group, and the mean over the selected
  // `groups` is the mask. Every selected group must hold a map (the caller
  // checks). map_groups, groups and spans are host arrays.
  virtual void MapoMask(float* mask, const float* scores, int rows,
                        const MapoGroup* map_groups, int num_maps,
                        const MapoGroup* groups, int num_groups,
                        const SeqSpan* spans, int num_spans) = 0;
  // SparsePO's pair objective over `num_pairs` pairs, pair i's chosen and
  // rejected responses being spans 2i and 2i + 1 (host array) of the rows:
  // writes every span row's outputs and adds the metric sums
  // (kSparsePoMetricCount doubles, SparsePoMetric order, backend memory),
  // the entropy summed over every span row.
  virtual void SparsePoCoefficients(const SparsePoRowOutputs& out,
                                    double* metrics,
                                    const SparsePoRowInputs& in,
                                    const SeqSpan* spans, int num_pairs,
                                    const SparsePoParams& params) = 0;

  // ---- objectives on the device (docs/objectives.md §7) ----
  // From pass 1's per-row values of `num_seqs` sequences (OutputForward's
  // logp, logit_sum, correct, entropy and, for WPO, log_sum_sq_probs;
  // sequence s is rows [spans[s].start, spans[s].start + spans[s].len) of
  // them; SequencesPerUnit(params) consecutive spans form one unit), sums
  // each sequence's values, computes the objective's coefficients
  // G_t into coef (every row of every span) and adds the metric sums
  // (ObjectiveMetric order, kObjectiveMetricCount doubles) to `metrics`.
  // spans, reference (ReferenceValuesPerSequence values per sequence: L̃ of
  // each, LD-weighted with ld_alpha, and KTO's labels) and reference_tokens
  // (ℓ̃ of each
  // span row's token, indexed as logp; read where NeedsReferenceTokens) are
  // host arrays; every other pointer is backend memory. log_sum_sq_probs is
  // read with use_weighting only.
  virtual void ObjectiveCoefficients(
      float* coef, double* metrics, const float* logp, const float* logit_sum,
      const int32_t* correct, const float* entropy,
      const float* log_sum_sq_probs, const SeqSpan* spans,
      const double* reference, const float* reference_tokens, int num_seqs,
      const ObjectiveParams& params) = 0;

  // ---- optimizer ----
  // Sum of squares of x[0..n), accumulated in double.
  virtual double SumSquares(const float* x, size_t n) = 0;
  virtual void Scale(float* x, float alpha, size_t n) = 0;
  // One AdamW step: m, v are the moment buffers (fp32), p the master weights.
  virtual void AdamW(float* p, const float* grad, float* m, float* v, size_t n,
                     const AdamWParams& hp) = 0;
};

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_BACKEND_H_
