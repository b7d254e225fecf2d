#include "trainer/loop/reference_model.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/memory_purpose.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"

namespace prefopt::loop {

absl::StatusOr<std::unique_ptr<model::Decoder>> CreateReferenceModel(
    const ModelConfig& config, const model::Decoder& policy) {
  kernels::Backend* backend = policy.backend();
  io::ModelSpec spec = policy.spec();
  std::optional<io::WeightStore> store;
  if (!config.reference_hf_path().empty()) {
    auto read = io::ReadHfConfig(config.reference_hf_path());
    if (!read.ok()) return read.status();
    if (read->vocab_size != spec.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.reference_hf_path: the reference vocabulary (",
                       read->vocab_size, ") differs from the policy's (",
                       spec.vocab_size, ")"));
    }
    spec = *read;
    auto opened = io::WeightStore::Open(config.reference_hf_path());
    if (!opened.ok()) return opened.status();
    store.emplace(*std::move(opened));
  }
  absl::StatusOr<std::unique_ptr<model::Decoder>> reference;
  {
    kernels::MemoryPurpose purpose("reference model");
    reference = model::Decoder::Create(spec, backend, policy.capacity(),
                                       /*trainable=*/false);
  }
  if (!reference.ok()) return reference.status();
  if (store.has_value()) {
    absl::Status s = (*reference)->LoadHf(*store);
    if (!s.ok()) return s;
  } else {
    // A LoRA policy's base weights: the adapters are not the reference's.
    std::vector<float> host(policy.base_layout().total());
    policy.CopyBaseToHost(host.data());
    backend->CopyToDevice((*reference)->base_params(), host.data(),
                          host.size());
  }
  return reference;
}

absl::Status CheckSameParamLayout(const model::Decoder& policy,
                                  const model::Decoder& reference) {
  const std::vector<model::ParamTensor>& p = policy.layout().tensors();
  const std::vector<model::ParamTensor>& r = reference.layout().tensors();
  for (size_t i = 0; i < std::max(p.size(), r.size()); ++i) {
    if (i >= p.size() || i >= r.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the reference has ", r.size(),
                       " parameter tensors, the policy ", p.size()));
    }
    if (p[i].name != r[i].name || p[i].shape != r[i].shape ||
        p[i].offset != r[i].offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter tensor ", i, " is ", r[i].name, " [",
          absl::StrJoin(r[i].shape, ", "), "] in the reference but ", p[i].name,
          " [", absl::StrJoin(p[i].shape, ", "), "] in the policy"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckReferenceSync(const DpoConfig& dpo,
                                const LiveReference* reference,
                                const model::Decoder& policy) {
  if (reference == nullptr) {
    return absl::InvalidArgumentError(
        "objective.dpo.sync_ref_model: needs model.live_reference: true (the "
        "precomputed reference log-probs would go stale)");
  }
  if (dpo.ref_model_sync_steps() < 1 ||
      !(dpo.ref_model_mixup_alpha() >= 0 && dpo.ref_model_mixup_alpha() <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.dpo: ref_model_sync_steps must be >= 1 and "
        "ref_model_mixup_alpha in [0, 1], got ",
        dpo.ref_model_sync_steps(), " and ", dpo.ref_model_mixup_alpha()));
  }
  // A reference of another shape (model.reference_hf_path) has no weights to
  // mix with the policy's.
  absl::Status same = CheckSameParamLayout(policy, reference->model());
  if (!same.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.dpo.sync_ref_model: model.reference_hf_path must have the "
        "policy's architecture and sizes to be mixed with it: ",
        same.message()));
  }
  return absl::OkStatus();
}

LiveReference::LiveReference(std::unique_ptr<model::Decoder> model, int chunk,
                             size_t num_examples)
    : LiveReference(model.get(), chunk, num_examples) {
  owned_ = std::move(model);
}

LiveReference::LiveReference(model::Decoder* policy, int chunk,
                             size_t num_examples)
    : model_(policy),
      output_(model_->backend(), model_->capacity().max_rows,
              model_->hidden_size(), model_->vocab_size(), chunk) {
  // Only the entries of the scored examples are ever read.
  values_.first_response.assign(num_examples, 0);
}

const objectives::ReferenceValues& LiveReference::Score(
    const std::vector<data::Example>& examples, const std::vector<int>& micro,
    bool include_context, int only_response) {
  data::BuildBatch(examples, micro.data(), static_cast<int>(micro.size()),
                   include_context, &batch_, only_response);
  // A frozen copy has no adapters; a LoRA policy is scored as the reference
  // (its starting adapter, or none: docs/lora.md).
  model_->set_reference_mode(true);
  const float* hidden = model_->Forward(batch_.packed);
  model_->set_reference_mode(false);
  const std::vector<objectives::SequenceScores> scores =
      output_.Forward(hidden, model_->output_embedding(),
                      batch_.packed.tokens.data(), batch_.segments);
  values_.sequence_logp.clear();
  values_.token_offset.clear();
  int64_t response = 0, token = 0;
  size_t scored = 0;
  for (int ex : micro) {
    values_.first_response[ex] = response;
    for (int r = 0; r < examples[ex].num_responses(); ++r, ++response) {
      values_.token_offset.push_back(token);
      if (only_response >= 0 && r != only_response) {
        values_.sequence_logp.push_back(
            std::numeric_limits<double>::quiet_NaN());
        continue;
      }
      values_.sequence_logp.push_back(scores[scored].logp);
      token += scores[scored].tokens;
      ++scored;
    }
  }
  values_.token_logp = output_.row_logp();
  return values_;
}

void LiveReference::MixIn(const model::Decoder& policy, float alpha) {
  // As TRL's SyncRefModelCallback: reference *= (1 - alpha), then
  // reference += alpha * policy.
  kernels::Backend* backend = model_->backend();
  const size_t n = model_->layout().total();
  backend->Scale(model_->params(), 1.0f - alpha, n);
  backend->Axpy(model_->params(), alpha, policy.params(), n);
}

reference::ReferenceOptions ReferenceOptionsFor(
    const objectives::Objective& objective, const TrainConfig& config,
    comm::Communicator* comm) {
  reference::ReferenceOptions options;
  options.token_logps =
      objective.reference_needs() == objectives::ReferenceNeeds::kTokenLogps;
  options.include_context = objective.reference_sees_context();
  options.micro_batch_examples = config.batch().micro_batch_size();
  options.output_chunk = config.output_chunk_tokens();
  options.comm = comm != nullptr && comm->world_size() > 1 ? comm : nullptr;
  return options;
}

}  // namespace prefopt::loop
