// The few CUDA runtime calls DeviceBuffer needs, so that device_buffer.cc
// compiles without CUDA; gpu_memory_cpu_only.cc answers them with errors.
#ifndef PREFOPT_COMM_GPU_MEMORY_H_
#define PREFOPT_COMM_GPU_MEMORY_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prefopt::comm::gpu {

// cudaMalloc on the current device.
absl::StatusOr<void*> Allocate(size_t bytes);
void Free(void* p);
// cudaMemcpy with cudaMemcpyDefault: between any host and device buffers.
absl::Status Copy(void* dst, const void* src, size_t bytes);
// cudaDeviceSynchronize.
absl::Status Synchronize();

}  // namespace prefopt::comm::gpu

#endif  // PREFOPT_COMM_GPU_MEMORY_H_
