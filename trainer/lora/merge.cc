#include "trainer/lora/merge.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace prefopt::lora {

void MergeFactors(const AdapterFactors& factors, int r, float scaling,
                  float* weight) {
  const int64_t in = factors.module.in_features;
  const int64_t out = factors.module.out_features;
  for (int64_t o = 0; o < out; ++o) {
    const float* b = factors.b.data() + o * r;
    float* row = weight + o * in;
    for (int64_t i = 0; i < in; ++i) {
      float delta = 0.0f;
      for (int k = 0; k < r; ++k) delta += b[k] * factors.a[k * in + i];
      row[i] += delta * scaling;
    }
  }
}

absl::Status MergeAdapter(const PeftAdapter& adapter,
                          const model::ParamLayout& layout, float* params) {
  const std::vector<model::HfTensorRef> refs = layout.HfTensors();
  const float scaling = adapter.settings.Scaling();
  for (const AdapterFactors& factors : adapter.factors) {
    const std::string name = absl::StrCat(factors.module.path, ".weight");
    const model::HfTensorRef* ref = nullptr;
    for (const model::HfTensorRef& candidate : refs) {
      if (candidate.name == name) ref = &candidate;
    }
    const int64_t out = factors.module.out_features;
    const int64_t in = factors.module.in_features;
    if (ref == nullptr ||
        ref->numel != static_cast<size_t>(out) * static_cast<size_t>(in)) {
      return absl::FailedPreconditionError(
          absl::StrCat("merging the LoRA adapter: the model has no ", out, "x",
                       in, " weight '", name, "'"));
    }
    MergeFactors(factors, adapter.settings.r, scaling, params + ref->offset);
  }
  return absl::OkStatus();
}

}  // namespace prefopt::lora
