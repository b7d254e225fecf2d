// The Trainer's checkpoint steps: resume during Init, saves after steps, and
// the clean stop on SIGTERM/SIGUSR1. The step itself is in trainer.cc; the
// helpers that need no Trainer are in checkpointing.h.
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/checkpointing.h"
#include "trainer/loop/trainer.h"

namespace prefopt::loop {
namespace {

constexpr char kResumeLatest[] = "latest";
// TR-DPO's synced reference in extra.safetensors: one tensor per parameter
// tensor, named kReferencePrefix + its name in the policy's layout.
constexpr char kRoleReference[] = "reference";
constexpr char kReferencePrefix[] = "reference.";

// Collective: OK on every rank when `status` is OK on every rank; otherwise
// each rank returns its own error, or one saying that another rank failed
// to `what`.
absl::Status AllRanksOk(comm::Communicator* comm, int world,
                        const absl::Status& status, const std::string& what) {
  if (world == 1) return status;
  double failed = status.ok() ? 0.0 : 1.0;
  if (absl::Status s = comm->AllReduceSum(&failed, 1); !s.ok()) return s;
  if (!status.ok()) return status;
  if (failed > 0) {
    return absl::InternalError(absl::StrCat(
        what, ": failed on ", failed, " other rank(s); see their errors"));
  }
  return absl::OkStatus();
}

}  // namespace

DataPosition Trainer::CurrentDataPosition() const {
  return DataPositionAfter(
      step_, steps_per_epoch_, static_cast<int64_t>(dataset_.examples.size()),
      global_batch_, config_.data().shuffle(), config_.seed());
}

bool Trainer::ReferenceSynced() const {
  return sync_reference_ &&
         step_ >= config_.objective().dpo().ref_model_sync_steps();
}

absl::Status Trainer::RestoreSyncedReference(
    absl::Span<const checkpoint::LoadedTensor* const> tensors, int64_t step) {
  const DpoConfig& dpo = config_.objective().dpo();
  if (!sync_reference_) {
    if (tensors.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "extra.safetensors holds a reference model that TR-DPO has moved "
        "(saved with objective.dpo.sync_ref_model: true), but this run does "
        "not sync its reference: resume it with objective.dpo.sync_ref_model: "
        "true and model.live_reference: true, or train into a new run_dir");
  }
  if (step < dpo.ref_model_sync_steps()) {
    if (tensors.empty()) return absl::OkStatus();
  } else if (tensors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "objective.dpo.sync_ref_model: true with ref_model_sync_steps: ",
        dpo.ref_model_sync_steps(), " has moved the reference by step ", step,
        ", but the checkpoint holds no reference (no reference.* tensors in "
        "extra.safetensors): the run that saved it did not sync its reference "
        "(a prefopt that ignored sync_ref_model); train into a new run_dir"));
  }
  model::Decoder& ref = live_reference_->model();
  std::map<std::string, const checkpoint::LoadedTensor*> given;
  for (const checkpoint::LoadedTensor* t : tensors) given[t->name] = t;
  // Everything is checked before anything is written.
  for (const model::ParamTensor& t : ref.layout().tensors()) {
    auto it = given.find(kReferencePrefix + t.name);
    if (it == given.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TR-DPO reference: tensor ", kReferencePrefix, t.name,
                       " is missing from extra.safetensors"));
    }
    if (it->second->shape != t.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("TR-DPO reference: tensor ", it->first, " has shape [",
                       absl::StrJoin(it->second->shape, ", "), "], expected [",
                       absl::StrJoin(t.shape, ", "), "]"));
    }
  }
  if (given.size() != ref.layout().tensors().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TR-DPO reference: extra.safetensors holds ", given.size(),
        " reference tensors, the model has ", ref.layout().tensors().size()));
  }
  for (const model::ParamTensor& t : ref.layout().tensors()) {
    backend_->CopyToDevice(ref.params() + t.offset,
                           given[kReferencePrefix + t.name]->values.data(),
                           t.numel);
  }
  return absl::OkStatus();
}

absl::Status Trainer::InitCheckpoints() {
  absl::StatusOr<uint64_t> tokenizer = TokenizerFingerprint(config_);
  if (!tokenizer.ok()) return tokenizer.status();
  tokenizer_fingerprint_ = *tokenizer;
  // One id for all ranks' files of this launch, so that Finalize can tell
  // them from leftovers of crashed launches.
  writer_id_ = rank_ == 0 ? checkpoint::NewWriterId() : std::string();
  if (absl::Status s = BroadcastString(comm_, &writer_id_); !s.ok()) return s;
  if (config_.resume().empty()) return absl::OkStatus();

  // Rank 0 chooses, so that every rank restores the same checkpoint even if
  // a save of another launch completes meanwhile.
  std::string dir;
  if (rank_ == 0) {
    absl::StatusOr<std::string> chosen = ChooseResumeCheckpoint();
    if (!chosen.ok()) return chosen.status();
    dir = *chosen;
  }
  if (absl::Status s = BroadcastString(comm_, &dir); !s.ok()) return s;
  if (dir.empty()) return absl::OkStatus();
  return RestoreCheckpoint(dir);
}

absl::StatusOr<std::string> Trainer::ChooseResumeCheckpoint() {
  std::string run_dir = config_.run_dir();
  const std::string& resume = config_.resume();
  if (resume != kResumeLatest) {
    std::error_code error;
    if (!std::filesystem::exists(resume, error)) {
      return absl::NotFoundError(
          absl::StrCat("resume: ", resume, " does not exist"));
    }
    // A checkpoint folder, or a run dir whose latest checkpoint is meant.
    if (std::filesystem::exists(resume + "/manifest.textproto", error) ||
        !std::filesystem::exists(resume + "/checkpoints", error)) {
      return resume;
    }
    run_dir = resume;
  }
  std::vector<std::string> skipped;
  absl::StatusOr<std::string> latest =
      checkpoint::FindLatestCheckpoint(run_dir, &skipped);
  for (const std::string& reason : skipped) {
    out() << "resume: skipping " << reason << "\n";
  }
  // Only the run's own checkpoints may be absent: a fresh start.
  if (absl::IsNotFound(latest.status()) && resume == kResumeLatest) {
    out() << "resume: " << latest.status().message()
          << "; starting at step 0\n";
    return std::string();
  }
  if (!latest.ok()) return latest.status();
  if (!skipped.empty()) {
    out() << "resume: falling back to " << *latest << "\n";
  }
  return *latest;
}

absl::Status Trainer::RestoreCheckpoint(const std::string& dir) {
  const std::string what = absl::StrCat("resume from ", dir);
  // The training checks first: they need only the manifest, and say more
  // than a mismatched layout would.
  if (absl::Status s = CheckContinuesTraining(dir, config_, data_fingerprint_);
      !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", s.message()));
  }

  checkpoint::LoadOptions options;
  options.optimizer_range = checkpoint::FlatRange{optimizer_->moments_begin(),
                                                  optimizer_->moments_end()};
  absl::StatusOr<checkpoint::LoadedCheckpoint> loaded =
      checkpoint::LoadCheckpoint(dir, policy_->layout(), options);
  if (!loaded.ok()) return loaded.status();
  const CheckpointManifest& m = loaded->manifest;
  if (m.step() > total_steps_) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": it is at step ", m.step(), ", after this run's ",
                     total_steps_, " steps"));
  }
  step_ = static_cast<int>(m.step());
  const DataPosition now = CurrentDataPosition();
  if (absl::Status s = CheckSameDataOrder(m.data(), now); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", s.message()));
  }
  // LoadCheckpoint checked each field's range; these are the loop's own
  // rules, which a manifest edited by hand (and re-signed) may break.
  if (m.data().epoch() != now.epoch() ||
      m.data().next_batch() != now.next_batch()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what,
        ": manifest.textproto: fields 'data.epoch' and 'data.next_batch' "
        "put the data at epoch ",
        m.data().epoch(), ", batch ", m.data().next_batch(), ", but step ",
        m.step(), " leaves it at epoch ", now.epoch(), ", batch ",
        now.next_batch()));
  }
  // A step logs one training line and at most one evaluation line.
  if (m.metrics_lines() > 2 * m.step()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what,
        ": manifest.textproto: field 'metrics_lines' must be at most 2 * "
        "step = ",
        2 * m.step(),
        " (a training and an evaluation line per "
        "step), got ",
        m.metrics_lines()));
  }
  if (m.num_tokens() < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": manifest.textproto: field 'num_tokens' must be >= 0, got ",
        m.num_tokens()));
  }
  if (m.tokenizer_fingerprint() != tokenizer_fingerprint_) {
    out() << "warning: the tokenizer files differ from those of " << dir
          << "; checkpoints from now on copy the new ones\n";
  }

  const size_t total = policy_->layout().total();
  backend_->CopyToDevice(policy_->params(), loaded->params.data(), total);
  backend_->CopyToDevice(optimizer_->first_moment(), loaded->exp_avg.data(),
                         loaded->exp_avg.size());
  backend_->CopyToDevice(optimizer_->second_moment(), loaded->exp_avg_sq.data(),
                         loaded->exp_avg_sq.size());
  optimizer_->set_steps_taken(static_cast<int>(m.optimizer_step()));
  std::vector<io::TensorToWrite> extra;
  std::vector<const checkpoint::LoadedTensor*> reference;
  for (const checkpoint::LoadedTensor& t : loaded->extra) {
    if (t.role == "mask_net")
      extra.push_back({t.name, t.shape, t.values.data()});
    if (t.role == kRoleReference) reference.push_back(&t);
  }
  if (absl::Status s = RestoreExtraCheckpointTensors(extra); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", s.message()));
  }
  if (absl::Status s = RestoreSyncedReference(reference, m.step()); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", s.message()));
  }
  // The mask networks' optimizers step with the policy's.
  if (sparsepo_ != nullptr) {
    sparsepo_->SetOptimizerSteps(static_cast<int>(m.optimizer_step()));
  }
  resumed_metrics_lines_ = m.metrics_lines();
  num_tokens_ = m.num_tokens();
  if (rank_ == 0) {
    // The ETA's pace counts only the steps this launch runs.
    progress_ = std::make_unique<metrics::ProgressReporter>(
        log_, log_is_terminal_, total_steps_, /*first_step=*/step_);
    if (log_is_terminal_) {
      progress_->set_columns(metrics::TerminalColumns(STDOUT_FILENO));
    }
  }
  out() << "resumed from " << dir << ": step " << step_ << " of "
        << total_steps_ << " (epoch " << now.epoch() + 1 << ", batch "
        << now.next_batch() + 1 << " of " << now.batches_per_epoch() << ")";
  if (m.world_size() != world_) {
    out() << ", saved by " << m.world_size() << " rank(s), now " << world_;
  }
  out() << "\n";
  return absl::OkStatus();
}

absl::StatusOr<std::string> Trainer::SaveCheckpoint() {
  checkpoint::CheckpointContents c;
  CheckpointManifest& md = c.metadata;
  md.set_step(step_);
  md.set_optimizer_step(optimizer_->steps_taken());
  md.set_config_text(config::ResolvedConfigText(config_));
  md.set_config_fingerprint(ConfigFingerprint(config_));
  md.set_data_fingerprint(data_fingerprint_);
  md.set_tokenizer_fingerprint(tokenizer_fingerprint_);
  // No generator carries state from step to step: each epoch's shuffle is
  // recreated from (seed, epoch), which the data position records.
  *md.mutable_data() = CurrentDataPosition();
  md.set_metrics_lines(rank_ == 0 ? metrics_log_->lines() : 0);
  md.set_num_tokens(num_tokens_);
  c.rank = rank_;
  c.world_size = world_;
  c.writer_id = writer_id_;
  c.layout = &policy_->layout();

  const size_t total = policy_->layout().total();
  std::vector<float> params, reference_params;
  if (rank_ == 0) {
    params.resize(total);
    backend_->CopyToHost(params.data(), policy_->params(), total);
    c.spec = &spec_;
    c.params = params.data();
    c.tokenizer_dir = TokenizerDir(config_);
    // SparsePO's mask networks (and their moments): saved with the run,
    // never part of the Hugging Face model.
    checkpoint::TensorGroup masks;
    masks.role = "mask_net";
    for (const io::TensorToWrite& t : ExtraCheckpointTensors()) {
      masks.tensors.push_back({t.name, t.shape, t.data});
    }
    if (!masks.tensors.empty()) c.extra.push_back(std::move(masks));
    // TR-DPO's reference, once synced: no longer the initial weights that a
    // resumed run would rebuild from the config.
    if (ReferenceSynced()) {
      model::Decoder& ref = live_reference_->model();
      reference_params.resize(total);
      backend_->CopyToHost(reference_params.data(), ref.params(), total);
      checkpoint::TensorGroup group;
      group.role = kRoleReference;
      for (const model::ParamTensor& t : ref.layout().tensors()) {
        group.tensors.push_back({kReferencePrefix + t.name, t.shape,
                                 reference_params.data() + t.offset});
      }
      c.extra.push_back(std::move(group));
    }
  }
  // Each rank saves the moments it owns: its own shard when the optimizer
  // is sharded (ZeRO-1), else rank 0 the whole buffer.
  const checkpoint::FlatRange range{optimizer_->moments_begin(),
                                    optimizer_->moments_end()};
  const bool sharded = range.size() != total;
  md.set_zero_stage(sharded ? 1 : 0);
  std::vector<float> m, v;
  if (sharded || rank_ == 0) {
    m.resize(range.size());
    v.resize(range.size());
    backend_->CopyToHost(m.data(), optimizer_->first_moment(), m.size());
    backend_->CopyToHost(v.data(), optimizer_->second_moment(), v.size());
    c.optimizer = checkpoint::OptimizerShard{range, m.data(), v.data()};
  }

  absl::Status s = AllRanksOk(comm_, world_,
                              checkpoint::WriteRankFiles(config_.run_dir(), c),
                              "writing its files");
  if (!s.ok()) return s;
  PauseBeforeFinalizeIfTesting(step_);
  std::string dir;
  absl::Status finalized;
  if (rank_ == 0) {
    checkpoint::SaveOptions options;
    options.keep_last_n = config_.keep_last_n();
    absl::StatusOr<checkpoint::SaveResult> saved =
        checkpoint::Finalize(config_.run_dir(), c, options);
    if (saved.ok()) {
      dir = saved->dir;
      for (const std::string& error : saved->cleanup_errors) {
        progress_->Print(absl::StrCat("warning: ", error));
      }
    } else {
      finalized = saved.status();
    }
  }
  // No rank goes on (or exits) before the checkpoint is complete.
  s = AllRanksOk(comm_, world_, finalized, "finalizing it");
  if (!s.ok()) return s;
  return dir;
}

absl::StatusOr<bool> Trainer::CheckpointAfterStep() {
  int signal = config_.save_on_signal() ? ReceivedStopSignal() : 0;
  if (world_ > 1 && config_.save_on_signal()) {
    // A signal forwarded by srun or mpirun reaches the ranks at slightly
    // different times; they agree to stop after the same step, the first
    // after which any rank has it.
    double seen[2] = {signal == SIGTERM ? 1.0 : 0.0,
                      signal == SIGUSR1 ? 1.0 : 0.0};
    if (absl::Status s = comm_->AllReduceSum(seen, 2); !s.ok()) return s;
    signal = seen[0] > 0 ? SIGTERM : seen[1] > 0 ? SIGUSR1 : 0;
  }
  const int every = config_.save_every_steps();
  const bool last = step_ == total_steps_;
  if (last || signal != 0 || (every > 0 && step_ % every == 0)) {
    absl::StatusOr<std::string> dir = SaveCheckpoint();
    if (!dir.ok()) {
      return absl::Status(dir.status().code(),
                          absl::StrCat("saving the checkpoint of step ", step_,
                                       ": ", dir.status().message()));
    }
    if (rank_ == 0) progress_->Print(absl::StrCat("saved checkpoint ", *dir));
  }
  if (signal == 0 || last) return false;
  stop_signal_ = signal;
  return true;
}

}  // namespace prefopt::loop
