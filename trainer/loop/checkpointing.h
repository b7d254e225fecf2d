// What the training loop's checkpoints need beside trainer/checkpoint: stop
// signals, the comparisons that tell whether a checkpoint continues the same
// training (config, data, data order), and a string broadcast for the
// ranks' agreement on what to resume from. The Trainer's own save and resume
// steps are in trainer_checkpoint.cc.
#ifndef PREFOPT_TRAINER_LOOP_CHECKPOINTING_H_
#define PREFOPT_TRAINER_LOOP_CHECKPOINTING_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"
#include "trainer/data/examples.h"

namespace prefopt::loop {

// Installs the handlers of SIGTERM, SIGUSR1 and SIGINT (save_on_signal).
// Until DeferStopSignals each of them ends the process at once, saying so on
// stderr, with the signal's own exit status: while the run is prepared
// (data read and tokenized, reference log-probs computed) there is no state
// to save, and a read that blocks must not keep the process alive. Call
// after MPI is initialized, so that these handlers are the ones in place.
void InstallStopSignalHandlers();

// Called as the training loop starts: from then on SIGTERM and SIGUSR1 ask
// for a checkpoint and a clean stop instead of ending the process. The
// handler only records the signal, and the loop checks it between steps
// (ReceivedStopSignal), so a step and a save are never cut short by it.
// SIGINT gets back its action from before InstallStopSignalHandlers.
void DeferStopSignals();

// The stop signal recorded since DeferStopSignals (the latest, if several),
// or 0.
int ReceivedStopSignal();

// "SIGTERM", "SIGUSR1", "SIGINT", or "signal <n>".
std::string SignalName(int signal);

// `config` without the fields a resumed run may change without changing the
// training: run_dir, resume, save_every_steps, keep_last_n, save_on_signal,
// log_every_steps, data.eval_files, data.cache_dir, and data.train_files
// (whose contents the data fingerprint compares, so the files may move).
TrainConfig TrainingConfig(const TrainConfig& config);

// Fingerprint of TrainingConfig(config).
uint64_t ConfigFingerprint(const TrainConfig& config);

// OK when the config a checkpoint was saved with (`saved_config_text`, its
// manifest's config_text) trains as `config` does, comparing
// TrainingConfig of both. Otherwise FailedPrecondition naming every field
// that differs with the checkpoint's value and this run's.
absl::Status CheckSameTraining(const std::string& saved_config_text,
                               const TrainConfig& config);

// The checks resume makes before loading the checkpoint folder
// `checkpoint_dir`: that its manifest's config trains as `config` does
// (CheckSameTraining) and that its data fingerprint is `data_fingerprint`
// (DataFingerprint of this run's data). A manifest that cannot be read is
// not an error here: LoadCheckpoint verifies the folder and says what is
// wrong with it.
absl::Status CheckContinuesTraining(const std::string& checkpoint_dir,
                                    const TrainConfig& config,
                                    uint64_t data_fingerprint);

// Fingerprint of every training example's token ids and preference
// fraction, in order: equal fingerprints mean the same global batches.
uint64_t DataFingerprint(const data::Dataset& dataset);

// The folder whose tokenizer files checkpoints copy: data.tokenizer_path (its
// folder when it names a file), else model.hf_path; empty when neither is
// set.
std::string TokenizerDir(const TrainConfig& config);

// Fingerprint of TokenizerDir(config)/tokenizer.json; 0 when there is none.
absl::StatusOr<uint64_t> TokenizerFingerprint(const TrainConfig& config);

// Where the data stream stands after `step` optimizer steps (0-based next
// batch), for epochs of `batches_per_epoch` global batches of
// `global_batch_size` examples out of `num_examples`.
DataPosition DataPositionAfter(int64_t step, int64_t batches_per_epoch,
                               int64_t num_examples, int64_t global_batch_size,
                               bool shuffle, uint64_t shuffle_seed);

// OK when `now` orders the data as `saved` does (the same batches per epoch,
// examples, batch size and shuffling); otherwise FailedPrecondition naming
// each quantity that differs.
absl::Status CheckSameDataOrder(const DataPosition& saved,
                                const DataPosition& now);

// Sets `*value` on every rank to rank 0's. A null `comm` or a single rank
// leaves it as it is.
absl::Status BroadcastString(comm::Communicator* comm, std::string* value);

// Test hook for tests/checkpoint_fault_test.sh: when the environment variable
// PREFOPT_TEST_PAUSE_BEFORE_FINALIZE equals `step`, says so on stderr and
// sleeps for a minute, so that a test can kill the process while the
// checkpoint of `step` is written but not yet finalized.
void PauseBeforeFinalizeIfTesting(int64_t step);

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_CHECKPOINTING_H_
