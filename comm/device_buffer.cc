#include "comm/device_buffer.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/gpu_memory.h"

namespace prefopt::comm {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(Device device,
                                                    size_t bytes) {
  if (device == Device::kGpu) {
    absl::StatusOr<void*> p = gpu::Allocate(bytes);
    if (!p.ok()) return p.status();
    return DeviceBuffer(device, *p, bytes);
  }
  // 64-byte alignment, as vectorized reductions like.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("could not allocate ", bytes, " bytes of host memory"));
  }
  return DeviceBuffer(device, p, bytes);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(other.device_), data_(other.data_), bytes_(other.bytes_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    std::swap(device_, other.device_);
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  if (device_ == Device::kGpu) {
    gpu::Free(data_);
  } else {
    std::free(data_);
  }
}

absl::Status DeviceBuffer::CheckRange(size_t bytes, size_t offset) const {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    return absl::OutOfRangeError(
        absl::StrCat("bytes [", offset, ", ", offset + bytes,
                     ") are outside a buffer of ", bytes_, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Upload(const void* host, size_t bytes,
                                  size_t offset) {
  absl::Status s = CheckRange(bytes, offset);
  if (!s.ok()) return s;
  char* dst = static_cast<char*>(data_) + offset;
  if (device_ == Device::kGpu) return gpu::Copy(dst, host, bytes);
  std::memcpy(dst, host, bytes);
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Download(void* host, size_t bytes,
                                    size_t offset) const {
  absl::Status s = CheckRange(bytes, offset);
  if (!s.ok()) return s;
  const char* src = static_cast<const char*>(data_) + offset;
  if (device_ == Device::kGpu) return gpu::Copy(host, src, bytes);
  std::memcpy(host, src, bytes);
  return absl::OkStatus();
}

absl::Status SynchronizeDevice(Device device) {
  if (device == Device::kGpu) return gpu::Synchronize();
  return absl::OkStatus();
}

}  // namespace prefopt::comm
