#include "kernels/select/backend_select.h"

#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"

namespace prefopt::kernels {
namespace {

std::mutex& FactoryMutex() {
  static std::mutex mu;
  return mu;
}

GpuBackendFactory& Factory() {
  static GpuBackendFactory* factory = new GpuBackendFactory();
  return *factory;
}

GpuStreamOf& StreamOf() {
  static GpuStreamOf* stream_of = new GpuStreamOf();
  return *stream_of;
}

}  // namespace

void RegisterGpuBackend(GpuBackendFactory factory, GpuStreamOf stream_of) {
  std::lock_guard<std::mutex> lock(FactoryMutex());
  Factory() = std::move(factory);
  StreamOf() = std::move(stream_of);
}

absl::StatusOr<SelectedBackend> SelectBackend(DeviceKind device,
                                              PrecisionKind precision,
                                              int gpu_index) {
  SelectedBackend selected;
  std::string why_not_gpu;
  if (device != DeviceKind::kCpu) {
    GpuBackendFactory factory;
    GpuStreamOf stream_of;
    {
      std::lock_guard<std::mutex> lock(FactoryMutex());
      factory = Factory();
      stream_of = StreamOf();
    }
    if (!factory) {
      why_not_gpu = "this program has no GPU backend";
    } else {
      // The GPU's default precision is bf16.
      const bool bf16 = precision != PrecisionKind::kFp32;
      absl::StatusOr<std::unique_ptr<Backend>> gpu = factory(gpu_index, bf16);
      if (gpu.ok()) {
        selected.backend = *std::move(gpu);
        selected.gpu = true;
        if (stream_of) selected.stream = stream_of(*selected.backend);
        selected.description = absl::StrCat(
            "device GPU ", gpu_index, " (", selected.backend->Name(),
            device == DeviceKind::kAuto ? ", chosen by AUTO" : "", ")");
        return selected;
      }
      why_not_gpu = std::string(gpu.status().message());
      // There are GPUs, but not this one (more ranks on a node than GPUs):
      // AUTO must not leave this one rank on the CPU.
      if (gpu.status().code() == absl::StatusCode::kOutOfRange) {
        return absl::OutOfRangeError(absl::StrCat(
            device == DeviceKind::kGpu ? "device: GPU" : "device: AUTO",
            ", but GPU ", gpu_index, " cannot be used: ", why_not_gpu));
      }
    }
    if (device == DeviceKind::kGpu) {
      return absl::FailedPreconditionError(
          absl::StrCat("device: GPU, but GPU ", gpu_index,
                       " cannot be used: ", why_not_gpu));
    }
  }
  if (precision == PrecisionKind::kBf16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "precision: BF16 needs the GPU; the CPU backend computes in fp32",
        why_not_gpu.empty() ? ""
                            : absl::StrCat(" (no GPU: ", why_not_gpu, ")")));
  }
  selected.backend = std::make_unique<CpuBackend>();
  selected.description =
      device == DeviceKind::kAuto
          ? absl::StrCat("device CPU (fp32; AUTO found no usable GPU: ",
                         why_not_gpu, ")")
          : "device CPU (fp32)";
  return selected;
}

}  // namespace prefopt::kernels
