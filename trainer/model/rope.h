// The rotary-embedding tables of Llama/Qwen2 decoders, computed on the host as
// transformers computes them (LlamaRotaryEmbedding and its rope_init_fn) and
// handed to Backend::RopeForward/RopeBackward.
#ifndef PREFOPT_TRAINER_MODEL_ROPE_H_
#define PREFOPT_TRAINER_MODEL_ROPE_H_

#include <vector>

#include "trainer/io/hf_config.h"

namespace prefopt::model {

// The head_dim/2 inverse frequencies for spec.rope_theta and
// spec.rope_scaling: transformers' _compute_default_rope_parameters, then
// _compute_linear_scaling_rope_parameters (divide by factor) or
// _compute_llama3_parameters (wavelength-dependent), evaluated in fp32 in the
// same order of operations.
std::vector<float> RopeInverseFrequencies(const io::ModelSpec& spec);

// The cos and sin tables [rows, head_dim/2] of position p = 0..rows-1: entry
// (p, i) holds cos/sin of the fp32 angle p * inv_freq[i] (transformers forms
// the angle in fp32 as well; the cos/sin themselves are rounded from double).
void RopeTables(const io::ModelSpec& spec, int rows, std::vector<float>* cos,
                std::vector<float>* sin);

}  // namespace prefopt::model

#endif  // PREFOPT_TRAINER_MODEL_ROPE_H_
