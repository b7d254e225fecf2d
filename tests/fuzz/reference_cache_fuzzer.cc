// Fuzzes reference::ParseReferenceCache, the reader of the precomputed
// reference log-prob cache, on the input re-signed as the writer signs it
// (its last 8 bytes become the fingerprint of the bytes before them) and read
// with the key its header names, for three fixed examples, with and without
// per-token log-probs.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/examples.h"
#include "trainer/reference/reference_logps.h"
#include "trainer/util/fingerprint.h"

namespace {

prefopt::data::Example MakeExample(int prompt, int chosen, int rejected) {
  prefopt::data::Example ex;
  ex.prompt.assign(prompt, 1);
  ex.chosen.assign(chosen, 2);
  ex.rejected.assign(rejected, 3);
  return ex;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Two pairs and a demonstration: 5 responses of 3 + 2 + 4 + 1 + 2 tokens.
  static const std::vector<prefopt::data::Example> examples = {
      MakeExample(2, 3, 2), MakeExample(1, 4, 0), MakeExample(3, 1, 2)};
  std::string bytes(prefopt::fuzz::AsView(data, size));
  if (bytes.size() >= 8) {
    prefopt::util::Fingerprinter fp;
    fp.Update(bytes.data(), bytes.size() - 8);
    const uint64_t check = fp.Value();
    std::memcpy(bytes.data() + bytes.size() - 8, &check, 8);
  }
  // Header: magic[8], key u64 (reference_logps.cc).
  uint64_t key = 0;
  if (bytes.size() >= 16) std::memcpy(&key, bytes.data() + 8, 8);
  for (bool token_logps : {false, true}) {
    (void)prefopt::reference::ParseReferenceCache(bytes, key, examples,
                                                  token_logps);
  }
  return 0;
}
