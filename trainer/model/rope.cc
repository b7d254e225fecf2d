#include "trainer/model/rope.h"

#include <cmath>

namespace prefopt::model {

std::vector<float> RopeInverseFrequencies(const io::ModelSpec& spec) {
  const int half = static_cast<int>(spec.head_dim / 2);
  const float dim = static_cast<float>(spec.head_dim);
  const float base = static_cast<float>(spec.rope_theta);
  // inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), all fp32.
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / dim;
    const float power = static_cast<float>(std::pow(double{base}, exponent));
    inv_freq[i] = 1.0f / power;
  }
  const io::RopeScaling& scaling = spec.rope_scaling;
  const float factor = static_cast<float>(scaling.factor);
  switch (scaling.type) {
    case io::RopeScaling::Type::kNone:
      break;
    case io::RopeScaling::Type::kLinear:
      for (float& f : inv_freq) f /= factor;
      break;
    case io::RopeScaling::Type::kLlama3: {
      // Python computes these scalars in double; torch compares and combines
      // them with the fp32 tensors as fp32.
      const double old_context =
          static_cast<double>(scaling.original_max_position_embeddings);
      const float low_freq_wavelen =
          static_cast<float>(old_context / scaling.low_freq_factor);
      const float high_freq_wavelen =
          static_cast<float>(old_context / scaling.high_freq_factor);
      const float low = static_cast<float>(scaling.low_freq_factor);
      const float span = static_cast<float>(scaling.high_freq_factor -
                                            scaling.low_freq_factor);
      const float two_pi = static_cast<float>(2.0 * M_PI);
      const float old_context_f = static_cast<float>(old_context);
      for (float& f : inv_freq) {
        // `scalar / tensor` is tensor.reciprocal() * scalar in torch.
        const float wavelen = (1.0f / f) * two_pi;
        if (wavelen > low_freq_wavelen) {
          // Long wavelengths: slowed down by `factor`.
          f = f / factor;
        } else if (!(wavelen < high_freq_wavelen)) {
          // In between: interpolate between the scaled and unscaled values.
          const float smooth = ((1.0f / wavelen) * old_context_f - low) / span;
          f = (1.0f - smooth) * f / factor + smooth * f;
        }
      }
      break;
    }
  }
  return inv_freq;
}

void RopeTables(const io::ModelSpec& spec, int rows, std::vector<float>* cos,
                std::vector<float>* sin) {
  const std::vector<float> inv_freq = RopeInverseFrequencies(spec);
  const size_t half = inv_freq.size();
  cos->resize(static_cast<size_t>(rows) * half);
  sin->resize(static_cast<size_t>(rows) * half);
  for (int p = 0; p < rows; ++p) {
    for (size_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq[i];
      (*cos)[p * half + i] = static_cast<float>(std::cos(double{angle}));
      (*sin)[p * half + i] = static_cast<float>(std::sin(double{angle}));
    }
  }
}

}  // namespace prefopt::model
