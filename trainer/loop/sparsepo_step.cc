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
#include "kernels/sparsepo_math.h"
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

namespace {

// MAPO's maps: per layer at most (Llama/Qwen2) one MLP, six attention and six
// residual maps, plus the embedding and final-norm outputs and the logits map.
int MaxMapoMaps(int layers) { return 13 * layers + 3; }

}  // namespace

// Keeps what the masks need from the reference's Forward, restricted to the
// response rows (segment after segment), in backend memory: LEARNED keeps the
// hidden state after each layer (the last after the final norm), [L, rows,
// H]; MAPO keeps one score per row and map, the row's mean over the map's
// width, which is all the mask reads of a map (its rescaling follows per
// sequence), [maps, rows]. Both are gathered by backend ops while the
// reference runs.
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
    kernels::MemoryPurpose purpose("SparsePO mask inputs");
    buffer_ =
        backend_->Alloc(MaskInputFloats(learned_, layers, hidden, max_rows));
    map_groups_.reserve(MaxMapoMaps(layers));
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
    float* out = NextMap(*group);
    for (const objectives::ResponseSegment& s : *segments_) {
      backend_->RowMeans(out, v.data + static_cast<size_t>(s.row) * v.stride,
                         s.count, v.width, v.stride);
      out += s.count;
    }
  }

  // MAPO, after the reference's Forward: the logits map, whose score is a
  // row's mean reference logit, from the rows' logit sums.
  void AddLogitsMap(const float* ref_logit_sums, int vocab) {
    float* out = NextMap(MapoGroup::kLogits);
    backend_->Copy(out, ref_logit_sums, rows_);
    backend_->Scale(out, 1.0f / static_cast<float>(vocab), rows_);
  }

  // LEARNED: the layers' hidden states of the response rows, [L, rows, H].
  const float* states() const { return buffer_; }
  // MAPO: the maps' scores, [maps, rows], and each map's group.
  const float* scores() const { return buffer_; }
  const std::vector<MapoGroup>& map_groups() const { return map_groups_; }

 private:
  // The next map's scores, of `group`.
  float* NextMap(MapoGroup group) {
    if (map_groups_.size() == static_cast<size_t>(MaxMapoMaps(layers_))) {
      std::fprintf(stderr, "SparsePoStep: more than %d MaPO maps\n",
                   MaxMapoMaps(layers_));
      std::abort();
    }
    float* out = buffer_ + map_groups_.size() * rows_;
    map_groups_.push_back(group);
    return out;
  }

  kernels::Backend* backend_;
  bool learned_;
  io::ModelSpec::Arch arch_;
  int layers_, hidden_;
  const std::vector<objectives::ResponseSegment>* segments_ = nullptr;
  int rows_ = 0;  // the segments' rows: the stride of the buffer's parts
  float* buffer_ = nullptr;                          // backend memory
  bool selected_[4] = {false, false, false, false};  // by MapoGroup
  std::vector<MapoGroup> map_groups_;
};

size_t SparsePoStep::MaskInputFloats(bool learned, int layers, int hidden,
                                     int max_rows) {
  return learned ? static_cast<size_t>(layers) * max_rows * hidden
                 : static_cast<size_t>(MaxMapoMaps(layers)) * max_rows;
}

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
          step->mask_backend(), name, static_cast<int>(ref_spec.n_layer),
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
      chunk_(objectives::OutputChunkRows(config.output_chunk_tokens(),
                                         policy_->vocab_size(),
                                         policy_->capacity().max_rows)),
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
    // Two floats per double.
    metrics_ = b.Alloc(2 * kernels::kSparsePoMetricCount);
    b.Zero(metrics_, 2 * kernels::kSparsePoMetricCount);
  }
  metrics_h_.resize(kernels::kSparsePoMetricCount);
  labels_.reserve(rows);
  spans_.reserve(rows);
}

SparsePoStep::~SparsePoStep() {
  kernels::Backend& b = *policy_->backend();
  for (float* p : {rows_h_, rows_dh_, rows_ref_h_, chunk_buf_, ref_chunk_buf_,
                   row_values_, metrics_}) {
    b.Free(p);
  }
}

void SparsePoStep::ForwardBackward(const data::Batch& batch,
                                   double global_pairs) {
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
  auto row_value = [&](RowValue v) { return this->row_value(v, rows); };
  b.SparsePoOutputForward(
      layers, labels_.data(), rows, chunk_buf_, ref_chunk_buf_, chunk_,
      {row_value(kLse), row_value(kRefLse), row_value(kLogp),
       row_value(kRefLogp), row_value(kKl), row_value(kLogitSum),
       learned_ ? nullptr : row_value(kRefLogitSum), row_value(kEntropy)});

  // Pair i's chosen and rejected responses are segments 2i and 2i + 1.
  spans_.clear();
  int offset = 0;
  for (const objectives::ResponseSegment& s : segments) {
    spans_.push_back({offset, s.count});
    offset += s.count;
  }
  const int pairs = static_cast<int>(segments.size() / 2);
  for (int i = 0; i < pairs; ++i) {
    chosen_tokens_ += spans_[2 * i].len;
    rejected_tokens_ += spans_[2 * i + 1].len;
  }
  pairs_ += pairs;
  ComputeMasks(rows);

  const kernels::SparsePoParams params = objective_.Params(global_pairs);
  const bool reads_reward = kernels::sparsepo_math::ReadsRewardMask(params);
  const bool reads_kl = kernels::sparsepo_math::ReadsKlMask(params);
  const kernels::SparsePoRowInputs in{
      row_value(kLogp),
      row_value(kRefLogp),
      row_value(kKl),
      row_value(kLogitSum),
      row_value(kEntropy),
      reads_reward ? row_value(kMaskReward) : nullptr,
      reads_kl ? row_value(kMaskKl) : nullptr};
  const kernels::SparsePoRowOutputs out{
      row_value(kCoefA), row_value(kCoefB),
      reads_reward ? row_value(kDmaskReward) : nullptr,
      reads_kl ? row_value(kDmaskKl) : nullptr};
  b.SparsePoCoefficients(out, reinterpret_cast<double*>(metrics_), in,
                         spans_.data(), pairs, params);

  b.Zero(rows_dh_, static_cast<size_t>(rows) * C);
  b.SparsePoOutputBackward(layers, labels_.data(), rows, row_value(kLse),
                           row_value(kRefLse), out.coef_a, out.coef_b,
                           chunk_buf_, ref_chunk_buf_, chunk_, rows_dh_,
                           policy_->output_embedding_grad());
  b.Zero(policy_->dhidden(), static_cast<size_t>(batch.packed.rows()) * C);
  objectives::ScatterAddSegmentRows(b, policy_->dhidden(), rows_dh_, C,
                                    segments);
  policy_->Backward(batch.packed);
  for (size_t i = 0; i < nets_.size(); ++i) {
    nets_[i]->Backward(inputs_->states(), rows,
                       net_is_kl_[i] ? out.dmask_kl : out.dmask_reward);
  }
}

void SparsePoStep::ComputeMasks(int rows) {
  auto row_value = [&](RowValue v) { return this->row_value(v, rows); };
  if (learned_) {
    for (size_t i = 0; i < nets_.size(); ++i) {
      nets_[i]->Forward(inputs_->states(), rows,
                        row_value(net_is_kl_[i] ? kMaskKl : kMaskReward));
    }
    return;
  }
  if (std::find(mapo_groups_.begin(), mapo_groups_.end(), MapoGroup::kLogits) !=
      mapo_groups_.end()) {
    inputs_->AddLogitsMap(row_value(kRefLogitSum), policy_->vocab_size());
  }
  const std::vector<MapoGroup>& maps = inputs_->map_groups();
  for (MapoGroup g : mapo_groups_) {
    if (std::find(maps.begin(), maps.end(), g) == maps.end()) {
      // Create checked the groups, and the decoder reports every one.
      std::fprintf(stderr,
                   "SparsePoStep: MaPO group %s is selected but no %s "
                   "activation was captured\n",
                   objectives::MapoGroupName(g), objectives::MapoGroupName(g));
      std::abort();
    }
  }
  policy_->backend()->MapoMask(row_value(kMaskReward), inputs_->scores(), rows,
                               maps.data(), static_cast<int>(maps.size()),
                               mapo_groups_.data(),
                               static_cast<int>(mapo_groups_.size()),
                               spans_.data(), static_cast<int>(spans_.size()));
}

void SparsePoStep::TakeMetrics(objectives::MetricSums* sums) {
  if (pairs_ == 0) return;
  kernels::Backend& b = *policy_->backend();
  b.CopyToHost(reinterpret_cast<float*>(metrics_h_.data()), metrics_,
               2 * kernels::kSparsePoMetricCount);
  objective_.AddMetrics(metrics_h_.data(), pairs_, chosen_tokens_,
                        rejected_tokens_, /*entropy=*/true, sums);
  b.Zero(metrics_, 2 * kernels::kSparsePoMetricCount);
  pairs_ = 0;
  chosen_tokens_ = rejected_tokens_ = 0;
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
  const std::vector<StateBuffer> buffers = StateBuffers();
  size_t total = 0;
  for (const StateBuffer& b : buffers) total += b.tensor->numel;
  checkpoint_host_.resize(total);
  std::vector<io::TensorToWrite> out;
  float* at = checkpoint_host_.data();
  for (const StateBuffer& b : buffers) {
    mask_backend()->CopyToHost(at, b.data, b.tensor->numel);
    out.push_back({b.name, b.tensor->shape, at});
    at += b.tensor->numel;
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
    mask_backend()->CopyToDevice(b.data, given[b.name]->data, b.tensor->numel);
  }
  return absl::OkStatus();
}

}  // namespace prefopt::loop
