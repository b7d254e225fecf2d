// Reads a Hugging Face model folder with prefopt's readers and writes it back
// with its writers, so that testdata/check_export_with_transformers.py can
// check that transformers loads what WriteHfConfig and WriteWeightStore
// produce.
//
// Usage: reexport IN_DIR OUT_DIR F32|F16|BF16 MAX_SHARD_BYTES

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/weight_store.h"

namespace prefopt::io {
namespace {

absl::Status Reexport(const std::string& in_dir, const std::string& out_dir,
                      DType dtype, size_t max_shard_bytes) {
  absl::StatusOr<ModelSpec> spec = ReadHfConfig(in_dir);
  if (!spec.ok()) return spec.status();
  absl::StatusOr<WeightStore> store = WeightStore::Open(in_dir);
  if (!store.ok()) return store.status();

  const std::vector<std::string> names = store->Names();
  std::vector<std::vector<float>> values(names.size());
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < names.size(); ++i) {
    const TensorInfo* info = store->Find(names[i]);
    values[i].resize(static_cast<size_t>(info->numel()));
    if (absl::Status s =
            store->ReadFloat(names[i], info->shape, values[i].data());
        !s.ok()) {
      return s;
    }
    tensors.push_back({names[i], info->shape, values[i].data()});
  }
  if (absl::Status s =
          WriteWeightStore(out_dir, tensors, dtype, max_shard_bytes);
      !s.ok()) {
    return s;
  }
  spec->torch_dtype = dtype == DType::kBF16  ? "bfloat16"
                      : dtype == DType::kF16 ? "float16"
                                             : "float32";
  return WriteHfConfig(*spec, out_dir);
}

}  // namespace
}  // namespace prefopt::io

int main(int argc, char** argv) {
  using prefopt::io::DType;
  if (argc != 5) {
    std::cerr << "usage: " << argv[0]
              << " IN_DIR OUT_DIR F32|F16|BF16 MAX_SHARD_BYTES\n";
    return 2;
  }
  const std::optional<DType> dtype = prefopt::io::ParseDType(argv[3]);
  if (!dtype.has_value()) {
    std::cerr << "unknown dtype " << argv[3] << "\n";
    return 2;
  }
  const absl::Status status = prefopt::io::Reexport(
      argv[1], argv[2], *dtype, std::strtoull(argv[4], nullptr, 10));
  if (!status.ok()) {
    std::cerr << status << "\n";
    return 1;
  }
  return 0;
}
