#include "trainer/loop/device_select.h"

#include "absl/strings/str_cat.h"
#include "comm/launch_env.h"

namespace prefopt::loop {

absl::StatusOr<kernels::SelectedBackend> SelectDevice(const TrainConfig& config,
                                                      int rank) {
  // One GPU per rank: the node-local rank's (mpirun and srun both say which).
  int gpu_index = 0;
  if (config.device() != TrainConfig::CPU) {
    absl::StatusOr<comm::LaunchEnv> env = comm::DetectLaunchEnv();
    if (!env.ok()) return env.status();
    gpu_index = env->local_rank;
  }
  const kernels::DeviceKind device =
      config.device() == TrainConfig::GPU   ? kernels::DeviceKind::kGpu
      : config.device() == TrainConfig::CPU ? kernels::DeviceKind::kCpu
                                            : kernels::DeviceKind::kAuto;
  const kernels::PrecisionKind precision =
      config.precision() == TrainConfig::FP32 ? kernels::PrecisionKind::kFp32
      : config.precision() == TrainConfig::BF16
          ? kernels::PrecisionKind::kBf16
          : kernels::PrecisionKind::kDefault;
  absl::StatusOr<kernels::SelectedBackend> selected =
      kernels::SelectBackend(device, precision, gpu_index);
  if (!selected.ok()) {
    return absl::Status(
        selected.status().code(),
        absl::StrCat("rank ", rank, ": ", selected.status().message()));
  }
  return selected;
}

}  // namespace prefopt::loop
