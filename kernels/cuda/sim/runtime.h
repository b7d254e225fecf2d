// The host side of the CUDA simulation: the CUDA runtime API calls the
// project makes (device memory, page-locked host memory, copies, streams,
// events, device properties, kernel attributes, errors), defined here in
// place of libcudart, over host memory and the CPU execution layer.
//
// Work queued on a stream (kernels, async copies and memsets, cuBLASLt GEMMs)
// runs when the host synchronizes with it, not when it is queued: a host read
// of a result before cudaStreamSynchronize/cudaEventSynchronize sees stale
// data here as it may on a GPU, so a missing synchronization fails a test.
// Device memory is kept inaccessible (mprotect) except while queued work or a
// synchronous copy runs, so host code that dereferences a device pointer
// faults with a message naming the allocation, as it would crash on a GPU;
// each allocation ends next to a guard page, so a kernel reading well past
// the end faults too. (Under AddressSanitizer device memory is exact-size
// heap blocks instead, which ASan watches byte by byte.)
// Copies follow CUDA's pageable/page-locked rules: an async copy from pageable
// host memory is staged when it is queued, one into pageable host memory
// completes before the call returns; page-locked memory (cudaMallocHost) is
// read and written when the stream runs.
//
// Settings (environment): PREFOPT_CUDASIM_DEVICES (default 1),
// PREFOPT_CUDASIM_MEMORY_BYTES (device memory, default: the machine's RAM),
// PREFOPT_CUDASIM_DRIVER_VERSION (the driver's CUDA version as
// cudaDriverGetVersion reports it, e.g. 12020; default the runtime's, and an
// older one fails cudaGetDeviceCount with cudaErrorInsufficientDriver),
// PREFOPT_CUDASIM_WORKERS (grid_runner.h).
#ifndef PREFOPT_KERNELS_CUDA_SIM_RUNTIME_H_
#define PREFOPT_KERNELS_CUDA_SIM_RUNTIME_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

namespace prefopt::cudasim {

// The simulated device's name (cudaDeviceProp::name).
inline constexpr char kDeviceName[] = "CUDA CPU simulation (prefopt cudasim)";

// Queues `work` on `stream` (0: the legacy default stream). For library
// calls such as cuBLASLt that execute on a stream.
void Enqueue(cudaStream_t stream, std::function<void()> work);

// Sets the simulated device memory (cudaMalloc fails beyond it; memory
// already allocated stays), e.g. to run out of memory in the middle of a run.
void SetDeviceMemoryBytes(size_t bytes);

// The device memory allocated now.
size_t DeviceMemoryUsedBytes();

// Whether [p, p + bytes) lies inside one live device allocation.
bool IsDeviceRange(const void* p, size_t bytes);

// Runtime calls since the process started, for tests that bound what a
// training step moves and allocates: copies by direction (cudaMemcpy and
// cudaMemcpyAsync) and cudaMalloc calls.
struct CallCounts {
  int64_t device_to_host_copies;
  int64_t host_to_device_copies;
  int64_t device_allocations;
};
CallCounts Counts();

}  // namespace prefopt::cudasim

#endif  // PREFOPT_KERNELS_CUDA_SIM_RUNTIME_H_
