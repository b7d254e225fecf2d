// Communication buffers on a Device, for the communicator tests and the
// benchmark: host memory for kCpu, memory of the current GPU for kGpu (the
// trainer's own buffers come from its kernel backend). In a build without the
// CUDA toolkit, kGpu buffers are an error.
#ifndef PREFOPT_COMM_DEVICE_BUFFER_H_
#define PREFOPT_COMM_DEVICE_BUFFER_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace prefopt::comm {

class DeviceBuffer {
 public:
  // `bytes` uninitialized bytes.
  static absl::StatusOr<DeviceBuffer> Allocate(Device device, size_t bytes);

  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  float* floats() const { return static_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }

  // Copies between host memory and [offset, offset + bytes) of the buffer.
  absl::Status Upload(const void* host, size_t bytes, size_t offset = 0);
  absl::Status Download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  DeviceBuffer(Device device, void* data, size_t bytes)
      : device_(device), data_(data), bytes_(bytes) {}
  absl::Status CheckRange(size_t bytes, size_t offset) const;

  Device device_;
  void* data_;
  size_t bytes_;
};

// Waits for every queued operation of `device` (cudaDeviceSynchronize on
// kGpu, nothing on kCpu), e.g. before reading a clock.
absl::Status SynchronizeDevice(Device device);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_DEVICE_BUFFER_H_
