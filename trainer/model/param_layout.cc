#include "trainer/model/param_layout.h"

#include <cstring>
#include <utility>

namespace prefopt::model {

std::vector<int64_t> ParamTensor::HfShape() const {
  if (!hf_transposed) return shape;
  return {shape[1], shape[0]};
}

size_t ParamLayout::Add(ParamTensor tensor) {
  tensor.numel = 1;
  for (int64_t d : tensor.shape) tensor.numel *= static_cast<size_t>(d);
  // Keep every tensor 16-float aligned so vectorized loops never straddle two.
  total_ = (total_ + 15) / 16 * 16;
  tensor.offset = total_;
  total_ += tensor.numel;
  tensors_.push_back(std::move(tensor));
  return tensors_.back().offset;
}

const ParamTensor* ParamLayout::Find(const std::string& name) const {
  for (const ParamTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::vector<HfTensorRef> ParamLayout::HfTensors() const {
  std::vector<HfTensorRef> refs;
  for (const ParamTensor& t : tensors_) {
    if (t.hf_parts.empty()) {
      refs.push_back(
          {t.name, t.HfShape(), t.offset, t.numel, t.hf_transposed, &t});
      continue;
    }
    // Row-major: rows [b, b + r) of a [rows, ...] tensor are one range.
    const size_t row_size = t.numel / static_cast<size_t>(t.shape[0]);
    for (const HfPart& part : t.hf_parts) {
      std::vector<int64_t> shape = t.shape;
      shape[0] = part.rows;
      refs.push_back({part.name, std::move(shape),
                      t.offset + static_cast<size_t>(part.row_begin) * row_size,
                      static_cast<size_t>(part.rows) * row_size, false, &t});
    }
  }
  return refs;
}

void HfToLayout(const HfTensorRef& ref, const float* hf, float* buffer) {
  if (!ref.transposed) {
    std::memcpy(buffer, hf, ref.numel * sizeof(float));
    return;
  }
  // hf is [rows, cols]; the buffer holds its [cols, rows] transpose.
  const int64_t rows = ref.shape[0], cols = ref.shape[1];
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) buffer[j * rows + i] = hf[i * cols + j];
  }
}

void LayoutToHf(const HfTensorRef& ref, const float* buffer, float* hf) {
  if (!ref.transposed) {
    std::memcpy(hf, buffer, ref.numel * sizeof(float));
    return;
  }
  const int64_t rows = ref.shape[0], cols = ref.shape[1];
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) hf[i * cols + j] = buffer[j * rows + i];
  }
}

}  // namespace prefopt::model
