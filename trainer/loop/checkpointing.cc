#include "trainer/loop/checkpointing.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "trainer/util/fingerprint.h"
#include "trainer/util/input_file.h"

namespace prefopt::loop {
namespace {

// Written by the signal handler, read by the loop: lock-free atomics are
// async-signal-safe.
std::atomic<int> received_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);
// Set by DeferStopSignals: the handler records SIGTERM and SIGUSR1 instead of
// ending the process.
std::atomic<bool> stop_signals_deferred{false};
static_assert(std::atomic<bool>::is_always_lock_free);
// SIGINT's action before InstallStopSignalHandlers, which DeferStopSignals
// puts back.
struct sigaction sigint_before_install = {};

extern "C" void OnStopSignal(int signal) {
  // SIGINT may still reach this handler just after DeferStopSignals.
  if (signal != SIGINT &&
      stop_signals_deferred.load(std::memory_order_relaxed)) {
    received_stop_signal.store(signal, std::memory_order_relaxed);
    return;
  }
  // Only async-signal-safe calls: write(2), then the signal's default action
  // (it is blocked while this handler runs, and ends the process as it
  // returns), so that the parent sees the process ended by the signal.
  const char* message =
      signal == SIGTERM   ? "prefopt: stopped by SIGTERM while preparing the "
                            "run (nothing to save yet)\n"
      : signal == SIGUSR1 ? "prefopt: stopped by SIGUSR1 while preparing the "
                            "run (nothing to save yet)\n"
                          : "prefopt: stopped by SIGINT while preparing the "
                            "run (nothing to save yet)\n";
  for (size_t left = strlen(message); left > 0;) {
    const ssize_t n = write(STDERR_FILENO, message, left);
    if (n <= 0) break;
    message += n;
    left -= static_cast<size_t>(n);
  }
  ::signal(signal, SIG_DFL);
  raise(signal);
}

// Keeps the first text-format error instead of letting protobuf log it.
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (text_.empty()) {
      text_ = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
    }
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

// Parses `text` into `message`; on failure returns false with the first
// error in `*error`.
bool ParseQuietly(const std::string& text, google::protobuf::Message* message,
                  std::string* error) {
  FirstError errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (parser.ParseFromString(text, message)) return true;
  *error = errors.text();
  return false;
}

}  // namespace

void InstallStopSignalHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  // Restart interrupted system calls: file writes and MPI's waits carry on
  // as if nothing happened, and the loop looks at the flag between steps.
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
  // A shell starts background jobs with SIGINT ignored; they keep it so.
  sigaction(SIGINT, nullptr, &sigint_before_install);
  if (sigint_before_install.sa_handler != SIG_IGN) {
    sigaction(SIGINT, &action, nullptr);
  }
}

void DeferStopSignals() {
  stop_signals_deferred.store(true, std::memory_order_relaxed);
  sigaction(SIGINT, &sigint_before_install, nullptr);
}

int ReceivedStopSignal() {
  return received_stop_signal.load(std::memory_order_relaxed);
}

std::string SignalName(int signal) {
  switch (signal) {
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGINT:
      return "SIGINT";
    default:
      return absl::StrCat("signal ", signal);
  }
}

TrainConfig TrainingConfig(const TrainConfig& config) {
  TrainConfig training = config;
  training.clear_run_dir();
  training.clear_resume();
  training.clear_save_every_steps();
  training.clear_keep_last_n();
  training.clear_save_on_signal();
  training.clear_log_every_steps();
  training.clear_eval_every_steps();
  training.clear_export_hf_path();
  training.clear_collective_timeout_s();
  // The weights and moments have one layout on every backend: a run may
  // resume on another device.
  training.clear_device();
  training.clear_precision();
  // Recomputation changes how the gradients are computed, not their bits or
  // the model state.
  training.clear_activation_checkpointing();
  DataConfig& data = *training.mutable_data();
  data.clear_train_files();
  data.clear_eval_files();
  data.clear_cache_dir();
  return training;
}

uint64_t ConfigFingerprint(const TrainConfig& config) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  {
    // Deterministic: the same message always gives the same bytes.
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    TrainingConfig(config).SerializeToCodedStream(&coded);
  }
  util::Fingerprinter fp;
  fp.Update(bytes);
  return fp.Value();
}

absl::Status CheckSameTraining(const std::string& saved_config_text,
                               const TrainConfig& config) {
  TrainConfig saved;
  std::string error;
  if (!ParseQuietly(saved_config_text, &saved, &error)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint's config is not a TrainConfig this build can read "
        "(saved by a newer prefopt?): ",
        error));
  }
  google::protobuf::util::MessageDifferencer differencer;
  std::string report;
  differencer.ReportDifferencesToString(&report);
  if (differencer.Compare(TrainingConfig(saved), TrainingConfig(config))) {
    return absl::OkStatus();
  }
  std::vector<absl::string_view> lines =
      absl::StrSplit(report, '\n', absl::SkipEmpty());
  return absl::FailedPreconditionError(absl::StrCat(
      "the checkpoint was saved with a different training config (checkpoint "
      "-> this run): ",
      absl::StrJoin(lines, "; "),
      ". Resume with the checkpoint's config (only run_dir, resume, "
      "save_every_steps, keep_last_n, save_on_signal, log_every_steps, "
      "eval_every_steps, export_hf_path, device, precision, "
      "activation_checkpointing and data file paths may change), or train into "
      "a new run_dir"));
}

absl::Status CheckContinuesTraining(const std::string& checkpoint_dir,
                                    const TrainConfig& config,
                                    uint64_t data_fingerprint) {
  const std::string path = checkpoint_dir + "/manifest.textproto";
  // LoadCheckpoint refuses a manifest that is no regular file, too.
  if (!util::CheckInputFile(path).ok()) return absl::OkStatus();
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  CheckpointManifest manifest;
  std::string error;
  if (!in || !ParseQuietly(text, &manifest, &error)) return absl::OkStatus();
  if (absl::Status s = CheckSameTraining(manifest.config_text(), config);
      !s.ok()) {
    return s;
  }
  if (manifest.data_fingerprint() != data_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the training data differs from the checkpoint's (fingerprint ",
        absl::Hex(manifest.data_fingerprint()), ", now ",
        absl::Hex(data_fingerprint),
        "): data.train_files holds other examples, or their truncation "
        "changed"));
  }
  return absl::OkStatus();
}

uint64_t DataFingerprint(const data::Dataset& dataset) {
  util::Fingerprinter fp;
  fp.UpdateValue(dataset.examples.size());
  for (const data::Example& ex : dataset.examples) {
    for (const auto* ids :
         {&ex.context, &ex.prompt, &ex.chosen, &ex.rejected}) {
      fp.UpdateValue(ids->size());
      fp.Update(ids->data(), ids->size() * sizeof(int32_t));
    }
    fp.UpdateValue(ex.preference_fraction);
    // Only unpaired examples have labels; hashing only the set ones keeps the
    // fingerprints of other data, and so their checkpoints, as before.
    if (ex.label) fp.UpdateValue(ex.label);
  }
  return fp.Value();
}

std::string TokenizerDir(const TrainConfig& config) {
  const std::string& path = config.data().tokenizer_path();
  if (path.empty()) return config.model().hf_path();
  std::error_code error;
  if (std::filesystem::is_regular_file(path, error)) {
    return std::filesystem::path(path).parent_path().string();
  }
  return path;
}

absl::StatusOr<uint64_t> TokenizerFingerprint(const TrainConfig& config) {
  const std::string dir = TokenizerDir(config);
  if (dir.empty()) return 0;
  const std::string path = dir + "/tokenizer.json";
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return 0;
  return util::FingerprintFile(path);
}

DataPosition DataPositionAfter(int64_t step, int64_t batches_per_epoch,
                               int64_t num_examples, int64_t global_batch_size,
                               bool shuffle, uint64_t shuffle_seed) {
  DataPosition p;
  p.set_epoch(step / batches_per_epoch);
  p.set_next_batch(step % batches_per_epoch);
  p.set_batches_per_epoch(batches_per_epoch);
  p.set_num_examples(num_examples);
  p.set_global_batch_size(global_batch_size);
  p.set_shuffle(shuffle);
  p.set_shuffle_seed(shuffle_seed);
  // An epoch may skip a last batch too small for the ranks.
  const int64_t per_epoch =
      std::min(num_examples, batches_per_epoch * global_batch_size);
  p.set_examples_seen(p.epoch() * per_epoch +
                      std::min(per_epoch, p.next_batch() * global_batch_size));
  return p;
}

absl::Status CheckSameDataOrder(const DataPosition& saved,
                                const DataPosition& now) {
  std::vector<std::string> differences;
  auto compare = [&](const char* what, auto a, auto b) {
    if (a != b) differences.push_back(absl::StrCat(what, " ", a, " -> ", b));
  };
  compare("global batches per epoch", saved.batches_per_epoch(),
          now.batches_per_epoch());
  compare("examples", saved.num_examples(), now.num_examples());
  compare("global batch size", saved.global_batch_size(),
          now.global_batch_size());
  compare("shuffle", saved.shuffle(), now.shuffle());
  compare("shuffle seed", saved.shuffle_seed(), now.shuffle_seed());
  if (differences.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the data order differs from the checkpoint's (checkpoint -> this run: ",
      absl::StrJoin(differences, ", "),
      "), so the run cannot continue with the same batches"));
}

absl::Status BroadcastString(comm::Communicator* comm, std::string* value) {
  if (comm == nullptr || comm->world_size() == 1) return absl::OkStatus();
  uint64_t size = value->size();
  if (absl::Status s = comm->Broadcast(&size, sizeof(size), 0); !s.ok()) {
    return s;
  }
  value->resize(size);
  if (size == 0) return absl::OkStatus();
  return comm->Broadcast(value->data(), size, 0);
}

void PauseBeforeFinalizeIfTesting(int64_t step) {
  const char* pause = std::getenv("PREFOPT_TEST_PAUSE_BEFORE_FINALIZE");
  if (pause == nullptr || absl::StrCat(step) != pause) return;
  std::cerr << "test hook: checkpoint step " << step
            << " is written, pausing before Finalize" << std::endl;
  sleep(60);
}

}  // namespace prefopt::loop
