// Fuzzes config::LoadTrainConfig: the input's first part is the .textproto
// file, each line of its second part (after fuzz_util.h's kPartSeparator) a
// --set override. A config it accepts must read back, unchanged, from its
// ResolvedConfigText (what a run writes next to its outputs).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_split.h"
#include "google/protobuf/util/message_differencer.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainer/config/config_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts =
      prefopt::fuzz::SplitParts(prefopt::fuzz::AsView(data, size), 2);
  const std::string path =
      prefopt::fuzz::WriteScratchFile("config.textproto", parts[0]);
  std::vector<std::string> overrides;
  if (parts.size() > 1) {
    overrides = absl::StrSplit(
        absl::string_view(parts[1].data(), parts[1].size()), '\n');
  }
  absl::StatusOr<prefopt::TrainConfig> config =
      prefopt::config::LoadTrainConfig(path, overrides);
  if (!config.ok()) return 0;
  const std::string resolved_path = prefopt::fuzz::WriteScratchFile(
      "resolved.textproto", prefopt::config::ResolvedConfigText(*config));
  absl::StatusOr<prefopt::TrainConfig> reloaded =
      prefopt::config::LoadTrainConfig(resolved_path, {});
  if (!reloaded.ok() ||
      !google::protobuf::util::MessageDifferencer::Equals(*config, *reloaded)) {
    std::fprintf(stderr,
                 "config_fuzzer: the resolved config does not read back: %s\n",
                 reloaded.status().ToString().c_str());
    std::abort();
  }
  return 0;
}
