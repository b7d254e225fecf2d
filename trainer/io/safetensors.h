#ifndef PREFOPT_TRAINER_IO_SAFETENSORS_H_
#define PREFOPT_TRAINER_IO_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace prefopt::io {

// Element types of the safetensors format that prefopt reads.
enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// The safetensors spelling of `dtype`: "F32", "F16", "BF16", "F64", "I64",
// "I32", "I16", "I8", "U8", "BOOL".
std::string_view DTypeName(DType dtype);

// The DType spelled `name` (as DTypeName writes it), or nullopt.
std::optional<DType> ParseDType(std::string_view name);

// Bytes per element of `dtype`.
size_t DTypeSize(DType dtype);

// One tensor of a safetensors file.
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  // Byte range [begin, end) within the data section (after the header).
  size_t begin;
  size_t end;

  // The number of elements: the product of `shape` (1 for a scalar).
  int64_t numel() const;
};

// Exact conversions between fp32 and the 16-bit float formats. The narrowing
// ones round to nearest, ties to even; values beyond the format's range become
// infinity, and NaN stays NaN (sign and leading payload bits kept, quiet bit
// set).
float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);
float Fp16ToFloat(uint16_t bits);
uint16_t FloatToFp16(float value);

// A safetensors file mapped read-only into memory. Open() validates the whole
// header against the file, so later reads never go out of bounds.
class SafetensorsFile {
 public:
  // Maps and validates the file at `path`. Errors name the file and, where
  // one is at fault, the tensor: a file too short for the 8-byte header
  // length, a header length beyond the file, a header that is not a JSON
  // object, an unknown dtype, a shape whose size disagrees with its byte
  // range, byte ranges outside the file (a truncated file), and ranges that
  // overlap, leave gaps or do not end at the end of the file.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }

  // All tensors, in the order of their bytes in the file.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // The tensor called `name`, or null.
  const TensorInfo* Find(std::string_view name) const;

  // The string pairs of the header's "__metadata__" entry.
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

  // Converts the F32, F16, BF16 or F64 tensor `name` to fp32 into `out`, which
  // must hold numel() floats. Fails, naming the file and the tensor, when the
  // tensor is missing, is not a float tensor, or its shape is not
  // `expected_shape`.
  absl::Status ReadFloat(std::string_view name,
                         absl::Span<const int64_t> expected_shape,
                         float* out) const;

  // Converts the float tensor `name` of any shape to fp32.
  absl::StatusOr<std::vector<float>> ReadFloat(std::string_view name) const;

  // Widens the integer or BOOL tensor `name` to int64.
  absl::StatusOr<std::vector<int64_t>> ReadInt(std::string_view name) const;

  // The raw bytes of `tensor`, which must be one of tensors().
  const uint8_t* Data(const TensorInfo& tensor) const {
    return data_ + tensor.begin;
  }

 private:
  SafetensorsFile() = default;
  absl::StatusOr<const TensorInfo*> FindOrError(std::string_view name) const;
  void Unmap();

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// One fp32 tensor to write: `data` holds the product of `shape` floats in
// row-major order.
struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

// Writes `tensors` to a safetensors file at `path`, converted to `dtype` (F32,
// F16 or BF16; narrowing rounds to nearest even), with `metadata` as the
// "__metadata__" entry (omitted when empty). Tensors are laid out in the
// given order after a header padded with spaces to a multiple of 8 bytes. The
// file is replaced atomically: on error `path` is unchanged and no temporary
// file remains.
absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    DType dtype, const std::map<std::string, std::string>& metadata);

// Formats a shape as "[2, 3]" for messages.
std::string ShapeString(absl::Span<const int64_t> shape);

}  // namespace prefopt::io

#endif  // PREFOPT_TRAINER_IO_SAFETENSORS_H_
