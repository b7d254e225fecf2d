#include "trainer/loop/sparsepo_step.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/memory_purpose.h"
#include "trainer/util/rng.h"

namespace prefopt::loop {
namespace {

using model::Activation;
using objectives::MapoGroup;

MapoGroup FromConfig(SparsePoConfig::MapoGroup g) {
  switch (g) {
    case SparsePoConfig::MLP:
      return MapoGroup::kMlp;
    case SparsePoConfig::ATTN:
      return MapoGroup::kAttn;
    case SparsePoConfig::RESID:
      return MapoGroup::kResid;
    default:
      break;
  }
  return MapoGroup::kLogits;
}

}  // namespace

std::optional<MapoGroup> MapoGroupOf(Activation kind,
                                     io::ModelSpec::Arch arch) {
  const bool gpt2 = arch == io::ModelSpec::Arch::kGpt2;
  switch (kind) {
    case Activation::kQuery:
    case Activation::kKey:
    case Activation::kValue:
    case Activation::kQueryRotary:
    case Activation::kKeyRotary:
    case Activation::kAttentionValues:
      return MapoGroup::kAttn;
    case Activation::kEmbedding:
    case Activation::kAttentionNorm:
    case Activation::kResidAfterAttention:
    case Activation::kMlpNorm:
    case Activation::kMlpOutput:
    case Activation::kResidAfterMlp:
    case Activation::kFinalNorm:
      return MapoGroup::kResid;
    // The official GPT-2 block calls its MLP without hooks, and its
    // attention-output hook sits on the residual sum instead.
    case Activation::kAttentionOutput:
      if (gpt2) return std::nullopt;
      return MapoGroup::kResid;
    case Activation::kMlpActivation:
      if (gpt2) return std::nullopt;
      return MapoGroup::kMlp;
  }
  return std::nullopt;
}

// Keeps what the masks need from the reference's Forward, restricted to the
// response rows (segment after segment): LEARNED keeps the hidden state after
// each layer (the last after the final norm); MAPO keeps one score per row
// and map, the row's mean over the map's width, which is all MapoMask reads
// of a map (its min-max rescaling follows per sequence). Both are gathered in
// backend memory by backend ops while the reference runs, and Finish brings
// them to the host in one copy (none when the host can address the
// backend's memory).
class SparsePoStep::MaskInputs : public model::ActivationObserver {
 public:
  MaskInputs(kernels::Backend* backend, bool learned,
             const std::vector<MapoGroup>& groups, io::ModelSpec::Arch arch,
             int layers, int hidden, int max_rows)
      : backend_(backend),
        learned_(learned),
        arch_(arch),
        layers_(layers),
        hidden_(hidden) {
    for (MapoGroup g : groups) selected_[static_cast<int>(g)] = true;
    // LEARNED: every layer's rows; MAPO: per layer at most (Llama/Qwen2) one
    // MLP, six attention and six residual maps, plus the embedding and
    // final-norm outputs, one float per row each.
    const size_t floats = learned_
                              ? static_cast<size_t>(layers) * max_rows * hidden
                              : static_cast<size_t>(13 * layers + 2) * max_rows;
    {
      kernels::MemoryPurpose purpose("SparsePO mask inputs");
      buffer_ = backend_->Alloc(floats);
    }
    if (!backend_->HostAddressable()) host_.resize(floats);
    map_groups_.reserve(13 * layers + 2);
    state_ptrs_.resize(layers);
  }
  ~MaskInputs() override { backend_->Free(buffer_); }
  MaskInputs(const MaskInputs&) = delete;
  MaskInputs& operator=(const MaskInputs&) = delete;

  // Before the reference's Forward over a batch with these segments.
  void Begin(const std::vector<objectives::ResponseSegment>* segments) {
    segments_ = segments;
    rows_ = 0;
    for (const objectives::ResponseSegment& s : *segments) rows_ += s.count;
    map_groups_.clear();
  }

  void Observe(const model::ActivationView& v) override {
    if (learned_) {
      // Layer l's output, except the last layer's, which is taken after the
      // final norm.
      int slot = -1;
      if (v.kind == Activation::kResidAfterMlp && v.layer < layers_ - 1) {
        slot = v.layer;
      } else if (v.kind == Activation::kFinalNorm) {
        slot = layers_ - 1;
      }
      if (slot < 0) return;
      // The residual stream's views are whole, contiguous rows.
      if (v.width != hidden_ || v.stride != hidden_) {
        std::fprintf(stderr,
                     "SparsePoStep: hidden-state view %d wide with stride %d, "
                     "expected %d\n",
                     v.width, v.stride, hidden_);
        std::abort();
      }
      objectives::GatherSegmentRows(
          *backend_, buffer_ + static_cast<size_t>(slot) * rows_ * hidden_,
          v.data, hidden_, *segments_);
      return;
    }
    const std::optional<MapoGroup> group = MapoGroupOf(v.kind, arch_);
    if (!group || !selected_[static_cast<int>(*group)]) return;
    float* out = buffer_ + map_groups_.size() * rows_;
    map_groups_.push_back(*group);
    for (const objectives::ResponseSegment& s : *segments_) {
      backend_->RowMeans(out, v.data + static_cast<size_t>(s.row) * v.stride,
                         s.count, v.width, v.stride);
      out += s.count;
    }
  }

  // After the reference's Forward: the inputs on the host.
  void Finish() {
    const float* base = buffer_;
    if (!backend_->HostAddressable()) {
      const size_t n =
          static_cast<size_t>(rows_) *
          (learned_ ? layers_ * hidden_ : static_cast<int>(map_groups_.size()));
      backend_->CopyToHost(host_.data(), buffer_, n);
      base = host_.data();
    }
    host_base_ = base;
    for (int l = 0; l < layers_; ++l) {
      state_ptrs_[l] = base + static_cast<size_t>(l) * rows_ * hidden_;
    }
  }

  // LEARNED: per layer, the hidden states of the response rows.
  absl::Span<const float* const> states() const { return state_ptrs_; }
  // MAPO: the maps of the last Forward; map i's scores of the response rows
  // start at scores(i).
  int num_maps() const { return static_cast<int>(map_groups_.size()); }
  MapoGroup map_group(int i) const { return map_groups_[i]; }
  const float* scores(int i) const {
    return host_base_ + static_cast<size_t>(i) * rows_;
  }

 private:
  kernels::Backend* backend_;
  bool learned_;
  io::ModelSpec::Arch arch_;
  int layers_, hidden_;
  const std::vector<objectives::ResponseSegment>* segments_ = nullptr;
  int rows_ = 0;  // the segments' rows: the stride of the buffer's parts
  float* buffer_ = nullptr;  // backend memory
  std::vector<float> host_;  // its host copy, unless host-addressable
  const float* host_base_ = nullptr;
  std::vector<const float*> state_ptrs_;
  bool selected_[4] = {false, false, false, false};  // by MapoGroup
  std::vector<MapoGroup> map_groups_;
};

absl::StatusOr<std::unique_ptr<SparsePoStep>> SparsePoStep::Create(
    const TrainConfig& config, model::Decoder* policy,
    std::unique_ptr<model::Decoder> reference) {
  const SparsePoConfig& sp = config.objective().sparsepo();
  const bool mapo = sp.mask() == SparsePoConfig::MAPO;
  objectives::SparsePoOptions options;
  options.beta = sp.beta();
  options.l1_reward = sp.l1_reward();
  options.l1_kl = sp.l1_kl();
  options.common_mask = mapo || !sp.independent_masks();
  options.mask_on_reward = !sp.has_mask_on_reward() || sp.mask_on_reward();
  options.mask_on_kl = !sp.has_mask_on_kl() || sp.mask_on_kl();
  auto objective =
      objectives::SparsePoObjective::Create(options, policy->vocab_size());
  if (!objective.ok()) return objective.status();
  if (reference == nullptr && !policy->has_lora()) {
    return absl::InvalidArgumentError(
        "objective.sparsepo: a policy without model.lora needs a reference "
        "model of its own (only a LoRA policy is its own reference)");
  }
  if (reference != nullptr && reference->vocab_size() != policy->vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("objective.sparsepo: the reference vocabulary (",
                     reference->vocab_size(), ") differs from the policy's (",
                     policy->vocab_size(), ")"));
  }
  std::unique_ptr<SparsePoStep> step(new SparsePoStep(
      config, policy, std::move(reference), *std::move(objective)));
  if (mapo) {
    const bool gpt2 =
        step->reference_->spec().arch == io::ModelSpec::Arch::kGpt2;
    for (int g : sp.mapo_groups()) {
      if (g == SparsePoConfig::MAPO_GROUP_UNSPECIFIED) {
        return absl::InvalidArgumentError(
            "objective.sparsepo.mapo_groups: MAPO_GROUP_UNSPECIFIED is not a "
            "group (choose MLP, ATTN, RESID or LOGITS)");
      }
      if (g == SparsePoConfig::MLP && gpt2) {
        return absl::InvalidArgumentError(
            "objective.sparsepo.mapo_groups: MLP has no activations on GPT-2 "
            "(the official code captures none there); choose ATTN, RESID or "
            "LOGITS");
      }
      step->mapo_groups_.push_back(
          FromConfig(static_cast<SparsePoConfig::MapoGroup>(g)));
    }
    if (step->mapo_groups_.empty()) {
      if (!gpt2) step->mapo_groups_.push_back(MapoGroup::kMlp);
      for (MapoGroup g :
           {MapoGroup::kAttn, MapoGroup::kResid, MapoGroup::kLogits}) {
        step->mapo_groups_.push_back(g);
      }
    }
  }
  const io::ModelSpec& ref_spec = step->reference_->spec();
  const int max_rows = policy->capacity().max_rows;
  step->inputs_ = std::make_unique<MaskInputs>(
      step->reference_->backend(), step->learned_, step->mapo_groups_,
      ref_spec.arch, static_cast<int>(ref_spec.n_layer),
      static_cast<int>(ref_spec.hidden), max_rows);
  if (step->learned_) {
    // A stream of its own, so that the mask networks do not shift the
    // policy's initialization or the data order.
    util::Rng rng(config.seed() ^ 0x4D41534B4E455453ull);
    OptimizerConfig mask_optimizer = config.optimizer();
    mask_optimizer.set_weight_decay(sp.mask_weight_decay());
    mask_optimizer.set_decay_norms_and_biases(false);
    // (name, whether it is the independent KL mask) per network: the common
    // mask, or one independent mask per masked term.
    std::vector<std::pair<std::string, bool>> nets;
    if (options.common_mask) {
      nets.push_back({"sparsepo_mask", false});
    } else {
      if (options.mask_on_reward)
        nets.push_back({"sparsepo_mask_reward", false});
      if (options.mask_on_kl) nets.push_back({"sparsepo_mask_kl", true});
    }
    for (const auto& [name, kl] : nets) {
      auto net = std::make_unique<objectives::SparsePoMaskNet>(
          name, static_cast<int>(ref_spec.n_layer),
          static_cast<int>(ref_spec.hidden),
          static_cast<float>(ref_spec.norm_eps));
      net->Init(&rng, sp.mask_init_std());
      step->optimizers_.push_back(std::make_unique<optim::AdamWOptimizer>(
          step->mask_backend(), net->layout(), mask_optimizer));
      step->nets_.push_back(std::move(net));
      step->net_is_kl_.push_back(kl);
    }
  }
  return step;
}

SparsePoStep::SparsePoStep(const TrainConfig& config, model::Decoder* policy,
                           std::unique_ptr<model::Decoder> reference,
                           objectives::SparsePoObjective objective)
    : policy_(policy),
      own_reference_(std::move(reference)),
      reference_(own_reference_ != nullptr ? own_reference_.get() : policy),
      objective_(std::move(objective)),
      chunk_(config.output_chunk_tokens()),
      learned_(config.objective().sparsepo().mask() ==
               SparsePoConfig::LEARNED) {
  const size_t rows = policy_->capacity().max_rows;
  const size_t V = policy_->vocab_size();
  kernels::Backend& b = *policy_->backend();
  {
    kernels::MemoryPurpose purpose("SparsePO output layer");
    rows_h_ = b.Alloc(rows * policy_->hidden_size());
    rows_dh_ = b.Alloc(rows * policy_->hidden_size());
    rows_ref_h_ = b.Alloc(rows * reference_->hidden_size());
    chunk_buf_ = b.Alloc(static_cast<size_t>(chunk_) * V);
    ref_chunk_buf_ = b.Alloc(static_cast<size_t>(chunk_) * V);
    row_values_ = b.Alloc(kRowValues * rows);
    coefs_ = b.Alloc(2 * rows);
  }
  row_values_h_.resize(kHostRowValues * rows);
  coefs_h_.resize(2 * rows);
  labels_.reserve(rows);
  mask_reward_.resize(rows);
  mask_kl_.resize(rows);
}

SparsePoStep::~SparsePoStep() {
  kernels::Backend& b = *policy_->backend();
  for (float* p : {rows_h_, rows_dh_, rows_ref_h_, chunk_buf_, ref_chunk_buf_,
                   row_values_, coefs_}) {
    b.Free(p);
  }
}

void SparsePoStep::ForwardBackward(const data::Batch& batch,
                                   double global_pairs,
                                   objectives::MetricSums* sums) {
  kernels::Backend& b = *policy_->backend();
  const int C = policy_->hidden_size(), RC = reference_->hidden_size();
  const std::vector<objectives::ResponseSegment>& segments = batch.segments;

  // The reference first: with LoRA it is the policy's own decoder (in
  // reference mode), and Backward needs the policy's forward to be the last.
  // The reference shares the policy's backend (CreateReferenceModel).
  const bool shared = reference_ == policy_;
  inputs_->Begin(&segments);
  reference_->set_observer(inputs_.get());
  if (shared) policy_->set_reference_mode(true);
  const float* ref_hidden = reference_->Forward(batch.packed);
  if (shared) policy_->set_reference_mode(false);
  reference_->set_observer(nullptr);
  inputs_->Finish();
  // The response rows of both models, gathered so that the output layer's
  // chunks span sequences.
  const int rows =
      objectives::GatherSegmentRows(b, rows_ref_h_, ref_hidden, RC, segments);
  objectives::SegmentLabels(batch.packed.tokens.data(), segments, &labels_);
  objectives::GatherSegmentRows(b, rows_h_, policy_->Forward(batch.packed), C,
                                segments);
  // With LoRA the output embedding is frozen: it has no gradient, and pass 2
  // computes none.
  const kernels::SparsePoOutputLayers layers{rows_h_,
                                             policy_->output_embedding(),
                                             C,
                                             rows_ref_h_,
                                             reference_->output_embedding(),
                                             RC,
                                             policy_->vocab_size()};
  auto row_value = [&](RowValue v) {
    return row_values_ + static_cast<size_t>(v) * rows;
  };
  b.SparsePoOutputForward(
      layers, labels_.data(), rows, chunk_buf_, ref_chunk_buf_, chunk_,
      {row_value(kLse), row_value(kRefLse), row_value(kLogp),
       row_value(kRefLogp), row_value(kKl), row_value(kLogitSum),
       learned_ ? nullptr : row_value(kRefLogitSum), row_value(kEntropy)});
  b.CopyToHost(row_values_h_.data(), row_values_,
               static_cast<size_t>(kHostRowValues) * rows);
  // TRL's entropy metric over every response token, as the loop logs it for
  // the other objectives (objectives::AddEntropyMetric).
  const float* entropy = HostRowValue(kEntropy, rows);
  double entropy_sum = 0.0;
  for (int r = 0; r < rows; ++r) entropy_sum += entropy[r];
  sums->Add("entropy", entropy_sum, rows);
  ComputeMasks(batch, rows);

  // The objective, pair by pair; its per-token outputs come in row order.
  grads_.Clear();
  const float* logp = HostRowValue(kLogp, rows);
  const float* ref_logp = HostRowValue(kRefLogp, rows);
  const float* kl = HostRowValue(kKl, rows);
  const float* logit_sum = HostRowValue(kLogitSum, rows);
  auto response = [&](int offset, int k) {
    objectives::SparsePoResponse r;
    r.logp = absl::MakeConstSpan(logp + offset, k);
    r.ref_logp = absl::MakeConstSpan(ref_logp + offset, k);
    r.kl = absl::MakeConstSpan(kl + offset, k);
    r.mask_reward = absl::MakeConstSpan(mask_reward_.data() + offset, k);
    if (!objective_.options().common_mask) {
      r.mask_kl = absl::MakeConstSpan(mask_kl_.data() + offset, k);
    }
    for (int t = 0; t < k; ++t) r.logit_sum += logit_sum[offset + t];
    return r;
  };
  int offset = 0;
  for (size_t s = 0; s + 1 < segments.size(); s += 2) {
    const int kw = segments[s].count, kl_rows = segments[s + 1].count;
    objective_.Pair(response(offset, kw), response(offset + kw, kl_rows),
                    global_pairs, sums, &grads_);
    offset += kw + kl_rows;
  }

  std::copy(grads_.coef_a.begin(), grads_.coef_a.end(), coefs_h_.begin());
  std::copy(grads_.coef_b.begin(), grads_.coef_b.end(),
            coefs_h_.begin() + rows);
  b.CopyToDevice(coefs_, coefs_h_.data(), 2 * static_cast<size_t>(rows));
  b.Zero(rows_dh_, static_cast<size_t>(rows) * C);
  b.SparsePoOutputBackward(layers, labels_.data(), rows, row_value(kLse),
                           row_value(kRefLse), coefs_, coefs_ + rows,
                           chunk_buf_, ref_chunk_buf_, chunk_, rows_dh_,
                           policy_->output_embedding_grad());
  b.Zero(policy_->dhidden(), static_cast<size_t>(batch.packed.rows()) * C);
  objectives::ScatterAddSegmentRows(b, policy_->dhidden(), rows_dh_, C,
                                    segments);
  policy_->Backward(batch.packed);
  for (size_t i = 0; i < nets_.size(); ++i) {
    nets_[i]->Backward(
        inputs_->states(), rows,
        net_is_kl_[i] ? grads_.dmask_kl.data() : grads_.dmask_reward.data());
  }
}

void SparsePoStep::ComputeMasks(const data::Batch& batch, int rows) {
  if (learned_) {
    for (size_t i = 0; i < nets_.size(); ++i) {
      nets_[i]->Forward(inputs_->states(), rows,
                        net_is_kl_[i] ? mask_kl_.data() : mask_reward_.data());
    }
    return;
  }
  // The logits map's score is the mean reference logit of the row.
  const float inv_vocab = 1.0f / static_cast<float>(policy_->vocab_size());
  float* ref_logit_mean = HostRowValue(kRefLogitSum, rows);
  for (int r = 0; r < rows; ++r) ref_logit_mean[r] *= inv_vocab;
  std::vector<objectives::MapoActivation> maps;
  int offset = 0;
  for (const objectives::ResponseSegment& s : batch.segments) {
    maps.clear();
    for (int i = 0; i < inputs_->num_maps(); ++i) {
      maps.push_back(
          {inputs_->map_group(i), inputs_->scores(i) + offset, 1, 1});
    }
    maps.push_back({MapoGroup::kLogits, ref_logit_mean + offset, 1, 1});
    const absl::Status status = objectives::MapoMask(
        maps, mapo_groups_, s.count, mask_reward_.data() + offset);
    if (!status.ok()) {
      // Create checked the groups, and the decoder reports every one.
      std::fprintf(stderr, "SparsePoStep: %s\n",
                   std::string(status.message()).c_str());
      std::abort();
    }
    offset += s.count;
  }
}

std::vector<optim::GradientSpan> SparsePoStep::Gradients() {
  std::vector<optim::GradientSpan> spans;
  for (auto& net : nets_)
    spans.push_back({net->grads(), net->layout().total()});
  return spans;
}

void SparsePoStep::ZeroGradients() {
  for (auto& net : nets_) net->ZeroGrads();
}

void SparsePoStep::SetOptimizerSteps(int steps) {
  for (auto& optimizer : optimizers_) optimizer->set_steps_taken(steps);
}

void SparsePoStep::Update(float lr) {
  for (size_t i = 0; i < nets_.size(); ++i) {
    optimizers_[i]->Step(nets_[i]->params(), nets_[i]->grads(), lr);
    nets_[i]->ZeroGrads();
  }
}

std::vector<SparsePoStep::StateBuffer> SparsePoStep::StateBuffers() {
  std::vector<StateBuffer> out;
  for (size_t i = 0; i < nets_.size(); ++i) {
    for (const model::ParamTensor& t : nets_[i]->layout().tensors()) {
      out.push_back({t.name, &t, nets_[i]->params() + t.offset});
      out.push_back(
          {t.name + ".exp_avg", &t, optimizers_[i]->first_moment() + t.offset});
      out.push_back({t.name + ".exp_avg_sq", &t,
                     optimizers_[i]->second_moment() + t.offset});
    }
  }
  return out;
}

std::vector<io::TensorToWrite> SparsePoStep::CheckpointTensors() {
  std::vector<io::TensorToWrite> out;
  for (const StateBuffer& b : StateBuffers()) {
    out.push_back({b.name, b.tensor->shape, b.data});
  }
  return out;
}

absl::Status SparsePoStep::RestoreCheckpointTensors(
    absl::Span<const io::TensorToWrite> tensors) {
  std::map<std::string, const io::TensorToWrite*> given;
  for (const io::TensorToWrite& t : tensors) given[t.name] = &t;
  const std::vector<StateBuffer> buffers = StateBuffers();
  // Everything is checked before anything is written.
  for (const StateBuffer& b : buffers) {
    auto it = given.find(b.name);
    if (it == given.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("SparsePO mask state: tensor ", b.name, " is missing"));
    }
    if (it->second->shape != b.tensor->shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("SparsePO mask state: tensor ", b.name, " has shape [",
                       absl::StrJoin(it->second->shape, ", "), "], expected [",
                       absl::StrJoin(b.tensor->shape, ", "), "]"));
    }
  }
  if (given.size() != buffers.size()) {
    for (const io::TensorToWrite& t : tensors) {
      if (std::none_of(
              buffers.begin(), buffers.end(),
              [&](const StateBuffer& b) { return b.name == t.name; })) {
        return absl::InvalidArgumentError(
            absl::StrCat("SparsePO mask state: unexpected tensor ", t.name));
      }
    }
  }
  for (const StateBuffer& b : buffers) {
    const float* src = given[b.name]->data;
    std::copy(src, src + b.tensor->numel, b.data);
  }
  return absl::OkStatus();
}

}  // namespace prefopt::loop
