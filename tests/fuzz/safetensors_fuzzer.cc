// Fuzzes io::SafetensorsFile::Open on a file holding the input, then reads
// every tensor it accepted as float and as integer.
#include <cstddef>
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using prefopt::fuzz::AsView;
  const std::string path =
      prefopt::fuzz::WriteScratchFile("model.safetensors", AsView(data, size));
  absl::StatusOr<prefopt::io::SafetensorsFile> file =
      prefopt::io::SafetensorsFile::Open(path);
  prefopt::fuzz::CheckErrorNames(file.status(), path);
  if (!file.ok()) return 0;
  for (const prefopt::io::TensorInfo& tensor : file->tensors()) {
    prefopt::fuzz::CheckErrorNames(file->ReadFloat(tensor.name).status(), path);
    prefopt::fuzz::CheckErrorNames(file->ReadInt(tensor.name).status(), path);
  }
  return 0;
}
