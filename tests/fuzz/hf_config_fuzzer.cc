// Fuzzes io::ReadHfConfig on a model folder whose config.json is the input's
// first part and whose generation_config.json, when the input has a second
// part (after fuzz_util.h's kPartSeparator), is that part.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts =
      prefopt::fuzz::SplitParts(prefopt::fuzz::AsView(data, size), 2);
  const std::string config =
      prefopt::fuzz::WriteScratchFile("model/config.json", parts[0]);
  const std::string model_dir = prefopt::fuzz::ScratchDir() + "/model";
  const std::string generation = model_dir + "/generation_config.json";
  if (parts.size() > 1) {
    prefopt::fuzz::WriteScratchFile("model/generation_config.json", parts[1]);
  } else {
    std::error_code ignored;
    std::filesystem::remove(generation, ignored);
  }
  // Errors name config.json or generation_config.json; both live here.
  prefopt::fuzz::CheckErrorNames(prefopt::io::ReadHfConfig(model_dir).status(),
                                 model_dir);
  return 0;
}
