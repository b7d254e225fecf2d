// Fuzzes tokenizer::Tokenizer::FromJson with the input's first part as
// tokenizer.json; a tokenizer it accepts then encodes the second part (after
// fuzz_util.h's kPartSeparator), with and without special tokens, and decodes
// the ids and the second part's bytes taken as ids.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts =
      prefopt::fuzz::SplitParts(prefopt::fuzz::AsView(data, size), 2);
  absl::StatusOr<prefopt::tokenizer::Tokenizer> tokenizer =
      prefopt::tokenizer::Tokenizer::FromJson(parts[0], "fuzz/tokenizer.json");
  prefopt::fuzz::CheckErrorNames(tokenizer.status(), "fuzz/tokenizer.json");
  if (!tokenizer.ok()) return 0;
  const std::string_view text = parts.size() > 1 ? parts[1] : "Hello world!";
  for (bool special : {false, true}) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text, special);
    if (ids.ok()) (void)tokenizer->Decode(*ids, !special);
  }
  std::vector<int32_t> raw;
  for (unsigned char c : text) raw.push_back(static_cast<int32_t>(c) - 8);
  (void)tokenizer->Decode(raw, true);
  return 0;
}
