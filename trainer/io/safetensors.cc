#include "trainer/io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "trainer/io/atomic_file.h"
#include "trainer/io/json_file.h"
#include "trainer/io/string_view_compat.h"
#include "trainer/util/input_file.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian, and so must the host be"
#endif

namespace prefopt::io {
namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr struct {
  DType dtype;
  std::string_view name;
  size_t size;
} kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kF64, "F64", 8},
    {DType::kI64, "I64", 8},   {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},     {DType::kBool, "BOOL", 1},
};

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float BitsToFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

template <typename T>
T Load(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

bool IsFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 ||
         dtype == DType::kBF16 || dtype == DType::kF64;
}

// Product of `shape` times `element_size`, or nullopt on overflow.
std::optional<uint64_t> ByteSize(absl::Span<const int64_t> shape,
                                 size_t element_size) {
  uint64_t bytes = element_size;
  for (const int64_t dim : shape) {
    if (dim < 0 ||
        __builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
      return std::nullopt;
    }
  }
  return bytes;
}

absl::Status TensorError(const std::string& path, std::string_view tensor,
                         std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": tensor '", AbslView(tensor), "': ", AbslView(problem)));
}

// Reads a non-negative JSON integer.
std::optional<uint64_t> AsUnsigned(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value.get<int64_t>());
  }
  return std::nullopt;
}

absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& path,
                                            const std::string& name,
                                            const json& entry,
                                            uint64_t data_size) {
  if (!entry.is_object()) {
    return TensorError(path, name,
                       absl::StrCat("header entry must be an object, found ",
                                    DescribeJson(entry)));
  }
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return TensorError(path, name, "missing string field 'dtype'");
  }
  const std::optional<DType> dtype =
      ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.has_value()) {
    std::vector<std::string> names;
    for (const auto& d : kDTypes) names.emplace_back(d.name);
    return TensorError(
        path, name,
        absl::StrCat("unsupported dtype ", DescribeJson(*dtype_it),
                     " (supported: ", absl::StrJoin(names, ", "), ")"));
  }
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return TensorError(path, name, "missing array field 'shape'");
  }
  for (const json& dim : *shape_it) {
    const std::optional<uint64_t> d = AsUnsigned(dim);
    if (!d.has_value() ||
        *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(path, name,
                         absl::StrCat("shape entries must be non-negative "
                                      "integers, found ",
                                      DescribeJson(dim)));
    }
    info.shape.push_back(static_cast<int64_t>(*d));
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() ||
      offsets_it->size() != 2) {
    return TensorError(path, name,
                       "missing field 'data_offsets' of the form [begin, end]");
  }
  const std::optional<uint64_t> begin = AsUnsigned((*offsets_it)[0]);
  const std::optional<uint64_t> end = AsUnsigned((*offsets_it)[1]);
  if (!begin.has_value() || !end.has_value() || *begin > *end) {
    return TensorError(
        path, name,
        absl::StrCat("data_offsets must be non-negative integers [begin, end] "
                     "with begin <= end, found ",
                     offsets_it->dump()));
  }
  const std::optional<uint64_t> bytes =
      ByteSize(info.shape, DTypeSize(info.dtype));
  if (!bytes.has_value()) {
    return TensorError(
        path, name,
        absl::StrCat("shape ", ShapeString(info.shape), " is too large"));
  }
  if (*bytes != *end - *begin) {
    return TensorError(
        path, name,
        absl::StrCat("shape ", ShapeString(info.shape), " of ",
                     AbslView(DTypeName(info.dtype)), " needs ", *bytes,
                     " bytes, but data_offsets [", *begin, ", ", *end,
                     "] span ", *end - *begin, " bytes"));
  }
  if (*end > data_size) {
    return TensorError(
        path, name,
        absl::StrCat("data_offsets [", *begin, ", ", *end,
                     "] run past the end of the data section, which holds ",
                     data_size, " bytes (is the file truncated?)"));
  }
  info.begin = static_cast<size_t>(*begin);
  info.end = static_cast<size_t>(*end);
  return info;
}

void ConvertToFloat(DType dtype, const uint8_t* src, int64_t n, float* out) {
  switch (dtype) {
    case DType::kF32:
      // An empty tensor's buffer may be null, which memcpy may not take.
      if (n > 0) std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = Fp16ToFloat(Load<uint16_t>(src + 2 * i));
      }
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = Bf16ToFloat(Load<uint16_t>(src + 2 * i));
      }
      return;
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = static_cast<float>(Load<double>(src + 8 * i));
      }
      return;
    default:
      return;
  }
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t dim : shape) n *= dim;
  return n;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

float Bf16ToFloat(uint16_t bits) {
  return BitsToFloat(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToBf16(float value) {
  const uint32_t bits = FloatBits(value);
  if (std::isnan(value)) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040);
  }
  // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even;
  // a carry out of the mantissa correctly bumps the exponent (up to inf).
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Fp16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0x1f) {
    // Infinity or NaN; NaN payload bits move to the top of the fp32 mantissa.
    return BitsToFloat(sign | 0x7f800000 | (mantissa << 13));
  }
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in fp32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return BitsToFloat(sign | FloatBits(magnitude));
  }
  return BitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t FloatToFp16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t abs_bits = bits & 0x7fffffff;
  if (abs_bits > 0x7f800000) {  // NaN: keep the leading payload, set quiet.
    return static_cast<uint16_t>(sign | 0x7e00 | ((abs_bits >> 13) & 0x3ff));
  }
  // |value| >= 65520 rounds to infinity (65504 is the largest finite fp16).
  if (abs_bits >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);
  const int32_t exponent = static_cast<int32_t>(abs_bits >> 23) - 127;
  if (exponent < -25) {
    // Below half the smallest subnormal (2^-25): rounds to zero.
    return sign;
  }
  uint32_t mantissa;  // Includes the implicit leading bit.
  int shift;          // Bits of `mantissa` to drop.
  uint16_t result_exponent;
  if (exponent < -14) {
    // Subnormal result: value = mantissa * 2^(exponent - 23), and the fp16
    // unit is 2^-24.
    mantissa = (abs_bits & 0x7fffff) | 0x800000;
    shift = -exponent - 1;  // 14..24
    result_exponent = 0;
  } else {
    mantissa = abs_bits & 0x7fffff;
    shift = 13;
    result_exponent = static_cast<uint16_t>(exponent + 15);
  }
  const uint32_t kept = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  uint32_t result = (static_cast<uint32_t>(result_exponent) << 10) + kept;
  if (rest > half || (rest == half && (kept & 1))) {
    // A carry out of the mantissa correctly moves to the next exponent.
    ++result;
  }
  return static_cast<uint16_t>(sign | result);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  if (absl::Status s = util::CheckInputFile(path); !s.ok()) return s;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(
        err == ENOENT ? absl::StatusCode::kNotFound
                      : absl::StatusCode::kPermissionDenied,
        absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file is ", file_size,
        " bytes, too short for a safetensors file (the first 8 bytes hold the "
        "header length)"));
  }
  SafetensorsFile file;
  file.path_ = path;
  void* mapping = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  close(fd);
  if (mapping == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("cannot map ", path, ": ", std::strerror(mmap_errno)));
  }
  file.mapping_ = mapping;
  file.mapping_size_ = file_size;
  const uint8_t* bytes = static_cast<const uint8_t*>(mapping);

  const uint64_t header_size = Load<uint64_t>(bytes);
  if (header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_size,
                     " (the first 8 bytes) is above the ", kMaxHeaderBytes,
                     "-byte limit; this is not a safetensors file"));
  }
  if (header_size > file_size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header length ", header_size, " (the first 8 bytes) exceeds ",
        "the ", file_size - 8,
        " bytes that follow it; the file is truncated or not safetensors"));
  }
  const std::string_view header_text(reinterpret_cast<const char*>(bytes + 8),
                                     header_size);
  absl::StatusOr<json> header =
      ParseJson(header_text, absl::StrCat(path, " (header)"));
  if (!header.ok()) return header.status();
  if (!header->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header must be a JSON object, found ", DescribeJson(*header)));
  }

  file.data_ = bytes + 8 + header_size;
  const uint64_t data_size = file_size - 8 - header_size;
  for (const auto& [name, entry] : header->items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path,
                         ": __metadata__ must be an object of strings, "
                         "found ",
                         DescribeJson(entry)));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": __metadata__ entry '", key,
                           "' must be a string, found ", DescribeJson(value)));
        }
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<TensorInfo> info =
        ParseTensorEntry(path, name, entry, data_size);
    if (!info.ok()) return info.status();
    file.tensors_.push_back(*std::move(info));
  }

  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
            });
  size_t expected_begin = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& tensor : file.tensors_) {
    if (tensor.begin != expected_begin) {
      const std::string after =
          previous == nullptr
              ? std::string("the start of the data section")
              : absl::StrCat("tensor '", previous->name,
                             "', which ends at byte ", expected_begin);
      return TensorError(
          path, tensor.name,
          absl::StrCat(
              "data_offsets [", tensor.begin, ", ", tensor.end, "] ",
              tensor.begin < expected_begin ? "overlap" : "leave a gap after",
              " ", after, "; tensors must be laid out back to back"));
    }
    expected_begin = tensor.end;
    previous = &tensor;
  }
  if (expected_begin != data_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the tensors cover ", expected_begin,
                     " bytes of the data section, but it holds ", data_size,
                     " bytes; the header does not describe the whole file"));
  }
  for (size_t i = 0; i < file.tensors_.size(); ++i) {
    file.index_.emplace(file.tensors_[i].name, i);
  }
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_size_(std::exchange(other.mapping_size_, 0)),
      data_(std::exchange(other.data_, nullptr)),
      tensors_(std::move(other.tensors_)),
      index_(std::move(other.index_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    data_ = std::exchange(other.data_, nullptr);
    tensors_ = std::move(other.tensors_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
  data_ = nullptr;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const TensorInfo*> SafetensorsFile::FindOrError(
    std::string_view name) const {
  const TensorInfo* tensor = Find(name);
  if (tensor == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": no tensor named '", AbslView(name),
                     "' (the file holds ", tensors_.size(), " tensors)"));
  }
  return tensor;
}

absl::Status SafetensorsFile::ReadFloat(
    std::string_view name, absl::Span<const int64_t> expected_shape,
    float* out) const {
  absl::StatusOr<const TensorInfo*> tensor = FindOrError(name);
  if (!tensor.ok()) return tensor.status();
  const TensorInfo& t = **tensor;
  if (absl::MakeConstSpan(t.shape) != expected_shape) {
    return TensorError(
        path_, name,
        absl::StrCat("expected shape ", ShapeString(expected_shape), ", found ",
                     ShapeString(t.shape)));
  }
  if (!IsFloat(t.dtype)) {
    return TensorError(path_, name,
                       absl::StrCat("expected a float tensor (F32, F16, BF16 "
                                    "or F64), found ",
                                    AbslView(DTypeName(t.dtype))));
  }
  ConvertToFloat(t.dtype, Data(t), t.numel(), out);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadFloat(
    std::string_view name) const {
  absl::StatusOr<const TensorInfo*> tensor = FindOrError(name);
  if (!tensor.ok()) return tensor.status();
  std::vector<float> values(static_cast<size_t>((*tensor)->numel()));
  if (absl::Status s = ReadFloat(name, (*tensor)->shape, values.data());
      !s.ok()) {
    return s;
  }
  return values;
}

absl::StatusOr<std::vector<int64_t>> SafetensorsFile::ReadInt(
    std::string_view name) const {
  absl::StatusOr<const TensorInfo*> tensor = FindOrError(name);
  if (!tensor.ok()) return tensor.status();
  const TensorInfo& t = **tensor;
  const int64_t n = t.numel();
  const uint8_t* src = Data(t);
  std::vector<int64_t> values(static_cast<size_t>(n));
  switch (t.dtype) {
    case DType::kI64:
      if (n > 0) std::memcpy(values.data(), src, static_cast<size_t>(n) * 8);
      break;
    case DType::kI32:
      for (int64_t i = 0; i < n; ++i) values[i] = Load<int32_t>(src + 4 * i);
      break;
    case DType::kI16:
      for (int64_t i = 0; i < n; ++i) values[i] = Load<int16_t>(src + 2 * i);
      break;
    case DType::kI8:
      for (int64_t i = 0; i < n; ++i) values[i] = Load<int8_t>(src + i);
      break;
    case DType::kU8:
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) values[i] = src[i];
      break;
    default:
      return TensorError(path_, name,
                         absl::StrCat("expected an integer or BOOL tensor, "
                                      "found ",
                                      AbslView(DTypeName(t.dtype))));
  }
  return values;
}

absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorToWrite>& tensors,
    DType dtype, const std::map<std::string, std::string>& metadata) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write ", path, " as ", AbslView(DTypeName(dtype)),
                     ": only F32, F16 and BF16 are supported"));
  }
  const size_t element_size = DTypeSize(dtype);
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json& m = header["__metadata__"];
    m = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) m[key] = value;
  }
  std::set<std::string_view> names;
  std::vector<int64_t> numels;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" ||
        !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": tensor name '", t.name,
                       "' is empty, reserved or used twice"));
    }
    const std::optional<uint64_t> bytes = ByteSize(t.shape, element_size);
    if (!bytes.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": tensor '", t.name,
                       "' has invalid shape ", ShapeString(t.shape)));
    }
    if (*bytes > 0 && t.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write ", path, ": tensor '", t.name, "' has no data"));
    }
    numels.push_back(static_cast<int64_t>(*bytes / element_size));
    header[t.name] = {{"dtype", std::string(DTypeName(dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + *bytes}}};
    offset += *bytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write ", path, ": tensor names and metadata must be UTF-8 (",
        e.what(), ")"));
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  absl::StatusOr<AtomicFileWriter> writer = AtomicFileWriter::Create(path);
  if (!writer.ok()) return writer.status();
  const uint64_t header_size = header_text.size();
  char length[8];
  std::memcpy(length, &header_size, sizeof(length));
  if (absl::Status s = writer->Append(std::string_view(length, 8)); !s.ok()) {
    return s;
  }
  if (absl::Status s = writer->Append(header_text); !s.ok()) return s;

  constexpr int64_t kChunk = 1 << 16;
  std::vector<uint16_t> converted(kChunk);
  for (size_t k = 0; k < tensors.size(); ++k) {
    const TensorToWrite& t = tensors[k];
    const int64_t n = numels[k];
    if (dtype == DType::kF32) {
      const std::string_view raw(reinterpret_cast<const char*>(t.data),
                                 static_cast<size_t>(n) * sizeof(float));
      if (absl::Status s = writer->Append(raw); !s.ok()) return s;
      continue;
    }
    for (int64_t start = 0; start < n; start += kChunk) {
      const int64_t count = std::min(kChunk, n - start);
      for (int64_t i = 0; i < count; ++i) {
        converted[i] = dtype == DType::kBF16 ? FloatToBf16(t.data[start + i])
                                             : FloatToFp16(t.data[start + i]);
      }
      const std::string_view raw(
          reinterpret_cast<const char*>(converted.data()),
          static_cast<size_t>(count) * 2);
      if (absl::Status s = writer->Append(raw); !s.ok()) return s;
    }
  }
  return writer->Commit();
}

}  // namespace prefopt::io
