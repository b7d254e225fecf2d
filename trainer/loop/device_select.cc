#include "trainer/loop/device_select.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "comm/launch_env.h"

namespace prefopt::loop {

absl::StatusOr<kernels::SelectedBackend> SelectDevice(const TrainConfig& config,
                                                      int rank) {
  // One GPU per rank: the node-local rank's (mpirun and srun both say which).
  comm::LaunchEnv env;
  if (config.device() != TrainConfig::CPU) {
    absl::StatusOr<comm::LaunchEnv> detected = comm::DetectLaunchEnv();
    if (!detected.ok()) return detected.status();
    env = *detected;
  }
  // A launcher that binds one GPU to each rank (srun --gpus-per-task=1) makes
  // that GPU device 0, as comm/nccl_communicator.cc's choice assumes too.
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const bool one_visible = visible != nullptr && *visible != '\0' &&
                           std::strchr(visible, ',') == nullptr;
  const int gpu_index = one_visible ? 0 : env.local_rank;
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
    std::string hint;
    if (selected.status().code() == absl::StatusCode::kOutOfRange) {
      hint = absl::StrCat(
          "; this process is ", comm::DescribeLaunchEnv(env),
          ", and each rank uses the GPU of its node-local rank: start at "
          "most as many ranks per node as the node has GPUs (srun "
          "--ntasks-per-node=G --gpus-per-node=G, mpirun --map-by "
          "ppr:G:node)");
    }
    return absl::Status(
        selected.status().code(),
        absl::StrCat("rank ", rank, ": ", selected.status().message(), hint));
  }
  return selected;
}

}  // namespace prefopt::loop
