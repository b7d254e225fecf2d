#include "tests/fixture_util.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"

namespace prefopt::testing {

std::string WorkspacePath(const std::string& relative) {
  char buf[4096];
  const char* cwd = getcwd(buf, sizeof(buf));
  return std::string(cwd == nullptr ? "." : cwd) + "/" + relative;
}

std::vector<float> TensorInHfLayout(const model::ParamTensor& t,
                                    const float* base) {
  const float* p = base + t.offset;
  if (!t.hf_transposed) return std::vector<float>(p, p + t.numel);
  const int64_t rows = t.shape[0], cols = t.shape[1];
  std::vector<float> out(t.numel);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = p[i * cols + j];
  }
  return out;
}

nlohmann::json ReadJson(const std::string& path) {
  return nlohmann::json::parse(std::ifstream(path), nullptr,
                               /*allow_exceptions=*/false);
}

void ExpectGpt2WeightsMatch(const model::Decoder& model,
                            const io::SafetensorsFile& expected, int steps,
                            double lr, const std::string& prefix) {
  const int C = model.hidden_size();
  for (const model::ParamTensor& t : model.layout().tensors()) {
    auto ref = expected.ReadFloat(prefix + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    std::vector<float> ours = TensorInHfLayout(t, model.params());
    if (t.name.find("attn.c_attn.bias") != std::string::npos) {
      for (int i = C; i < 2 * C; ++i) {
        EXPECT_NEAR(ours[i], (*ref)[i], steps * lr)
            << prefix << t.name << "[" << i << "]";
        ours[i] = (*ref)[i];
      }
    }
    EXPECT_LT(RelativeL2(ours, *ref), 1e-5)
        << "weights of " << prefix << t.name << " after " << steps << " steps";
  }
}

double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (a.size() != b.size()) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

std::string WriteTempFile(const std::string& name, const std::string& text) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(tmp ? tmp : "/tmp") + "/" + name;
  std::ofstream(path) << text;
  return path;
}

bool IsTrlOnlyDpoMetric(const std::string& name) {
  return name == "num_tokens";
}

}  // namespace prefopt::testing
