// Folding a LoRA adapter into the weights it adapts: W + s * B A, as PEFT's
// merge_and_unload does (docs/lora.md).
#ifndef PREFOPT_TRAINER_LORA_MERGE_H_
#define PREFOPT_TRAINER_LORA_MERGE_H_

#include "absl/status/status.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/model/param_layout.h"

namespace prefopt::lora {

// Adds scaling * B A to `weight`, the [out_features, in_features] weight of
// factors.module in prefopt's layout (GPT-2's Conv1D weights included: the
// layout holds them as [out, in], so no transpose is needed here; in Hugging
// Face's [in, out] layout the same values are the transposed delta PEFT adds
// with fan_in_fan_out). Each element is computed as PEFT does: the fp32 sum
// over the rank, times the scaling, added to the weight.
void MergeFactors(const AdapterFactors& factors, int r, float scaling,
                  float* weight);

// Merges every module of `adapter` into `params` (layout.total() floats in
// `layout`), whose tensors are found by their Hugging Face names
// ("<module path>.weight"). FailedPrecondition naming the module when the
// layout has no such weight or its shape disagrees with the factors.
absl::Status MergeAdapter(const PeftAdapter& adapter,
                          const model::ParamLayout& layout, float* params);

}  // namespace prefopt::lora

#endif  // PREFOPT_TRAINER_LORA_MERGE_H_
