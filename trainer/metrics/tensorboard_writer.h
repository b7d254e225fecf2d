// TensorBoard event files written by prefopt itself: TFRecord-framed Event
// protos holding scalar summaries, which `tensorboard --logdir=RUN_DIR` shows
// as one chart per metric.
#ifndef PREFOPT_TRAINER_METRICS_TENSORBOARD_WRITER_H_
#define PREFOPT_TRAINER_METRICS_TENSORBOARD_WRITER_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "trainer/io/append_file.h"

namespace prefopt::metrics {

class TensorBoardWriter {
 public:
  // Creates log_dir (and its parents) if needed and a new event file in it,
  // events.out.tfevents.<unix time>.<hostname>.<pid>.prefopt, whose first
  // record declares the file version "brain.Event:2". Never overwrites a file.
  static absl::StatusOr<TensorBoardWriter> Open(const std::string& log_dir);
  TensorBoardWriter(TensorBoardWriter&& other) noexcept = default;
  TensorBoardWriter& operator=(TensorBoardWriter&&) = delete;
  TensorBoardWriter(const TensorBoardWriter&) = delete;

  // Appends one Event for `step` with a scalar per entry of `scalars`, tagged
  // TensorBoardTag(name), and hands it to the file system; an event that
  // cannot be written whole (a full disk) is not written at all. Values are
  // stored as float, as TensorBoard's simple_value is.
  absl::Status Write(int64_t step,
                     const std::map<std::string, double>& scalars);

  // Marks a resumed run whose next step is `step`: a SessionLog START event,
  // on which TensorBoard forgets the events of `step` and later that it read
  // from earlier files of the run dir, so that the steps run again after a
  // checkpoint are not shown twice.
  absl::Status WriteSessionStart(int64_t step);

  // The event file's path.
  const std::string& path() const { return file_.path(); }

 private:
  explicit TensorBoardWriter(io::AppendFile file) : file_(std::move(file)) {}
  absl::Status WriteRecord(const std::string& data);

  io::AppendFile file_;
};

// The TensorBoard tag of a metric: names that already say their split
// ("train/...", "eval/...", "test/...") are kept, every other (training)
// metric gets "train/" in front, as Hugging Face's Trainer and TRL name them.
std::string TensorBoardTag(absl::string_view metric_name);

// One TFRecord: the little-endian uint64 length of `data`, the masked CRC-32C
// of those 8 bytes, `data`, and the masked CRC-32C of `data` (both CRCs
// little-endian uint32).
std::string TfRecord(absl::string_view data);

}  // namespace prefopt::metrics

#endif  // PREFOPT_TRAINER_METRICS_TENSORBOARD_WRITER_H_
