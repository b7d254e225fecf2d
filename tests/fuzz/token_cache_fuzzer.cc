// Fuzzes data::ReadTokenCache on a cache file holding the input, re-signed as
// WriteTokenCache signs it (its last 4 bytes become the CRC-32C of the bytes
// before them) and read with the key and example kind its header names, so
// that the layout, not the checksum or the key, is what the reader sees.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/token_cache.h"
#include "trainer/util/crc32c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(prefopt::fuzz::AsView(data, size));
  if (bytes.size() >= 4) {
    const uint32_t crc = prefopt::util::Crc32c(bytes.data(), bytes.size() - 4);
    std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
  }
  // Header: magic[8], key u64, kind u32 (token_cache.cc).
  uint64_t key = 0;
  uint32_t kind = 0;
  if (bytes.size() >= 20) {
    std::memcpy(&key, bytes.data() + 8, 8);
    std::memcpy(&kind, bytes.data() + 16, 4);
  }
  const std::string path =
      prefopt::fuzz::WriteScratchFile("data.jsonl.tokcache", bytes);
  prefopt::fuzz::CheckErrorNames(
      prefopt::data::ReadTokenCache(
          path, key,
          kind == 1 ? prefopt::data::ExampleKind::kDemonstration
                    : prefopt::data::ExampleKind::kPreference,
          "data.jsonl")
          .status(),
      path);
  return 0;
}
