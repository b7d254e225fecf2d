// Chooses the backend a run computes on: the CPU backend, or the GPU backend
// that the program registered (kernels/cuda RegisterCudaBackend), following
// the configured device (AUTO, CPU, GPU) and precision.
//
// The GPU backend is registered, not linked in here, so that the training
// loop does not depend on CUDA: the prefopt command registers the CUDA backend
// (the real one, or the CPU simulation under --config=cudasim), and a test can
// register the simulated one in a default build.
#ifndef PREFOPT_KERNELS_SELECT_BACKEND_SELECT_H_
#define PREFOPT_KERNELS_SELECT_BACKEND_SELECT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace prefopt::kernels {

enum class DeviceKind { kAuto, kCpu, kGpu };
enum class PrecisionKind { kDefault, kFp32, kBf16 };

// Creates the GPU backend on CUDA device `device`, in bf16 or fp32.
using GpuBackendFactory =
    std::function<absl::StatusOr<std::unique_ptr<Backend>>(int device,
                                                           bool bf16)>;

// The CUDA stream (a cudaStream_t) a backend made by the factory runs its
// ops on.
using GpuStreamOf = std::function<void*(const Backend&)>;

// Makes `factory` the GPU backend for later SelectBackend calls (replacing
// an earlier one). Without a registered factory there is no GPU.
// `stream_of`, when given, names the backends' compute stream
// (SelectedBackend::stream).
void RegisterGpuBackend(GpuBackendFactory factory,
                        GpuStreamOf stream_of = nullptr);

struct SelectedBackend {
  std::unique_ptr<Backend> backend;
  bool gpu = false;
  // The GPU backend's compute stream (a cudaStream_t), null if unknown; data
  // parallel GPU ranks order their collectives after it.
  void* stream = nullptr;
  // One line for the run's log: the device, its precision, and for AUTO why.
  std::string description;
};

// The backend for this rank: the GPU `gpu_index` (the node-local rank) for
// kGpu, or for kAuto when that GPU can be created; else the CPU. Errors: kGpu
// without a usable GPU (the message says why), bf16 on the CPU, and
// OutOfRange for kGpu or kAuto when the factory says there are GPUs but not
// `gpu_index` (a rank must not fall back to the CPU alone).
absl::StatusOr<SelectedBackend> SelectBackend(DeviceKind device,
                                              PrecisionKind precision,
                                              int gpu_index);

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_SELECT_BACKEND_SELECT_H_
