#include "trainer/model/param_layout.h"

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

}  // namespace prefopt::model
