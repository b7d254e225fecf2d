#include "trainer/checkpoint/forge_manifest.h"

#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/text_format.h"
#include "trainer/util/crc32c.h"

namespace prefopt::checkpoint {

absl::Status ForgeManifest(
    const std::string& dir,
    const std::function<void(CheckpointManifest*)>& edit) {
  const std::string path = dir + "/manifest.textproto";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const std::string old_text(std::istreambuf_iterator<char>(in), {});
  CheckpointManifest manifest;
  if (!google::protobuf::TextFormat::ParseFromString(old_text, &manifest)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot parse"));
  }
  edit(&manifest);
  std::string text;
  google::protobuf::TextFormat::PrintToString(manifest, &text);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  std::ofstream(dir + "/COMPLETE", std::ios::binary | std::ios::trunc)
      << absl::StrFormat("manifest_crc32c: 0x%08x\n",
                         util::Crc32c(text.data(), text.size()));
  return absl::OkStatus();
}

}  // namespace prefopt::checkpoint
