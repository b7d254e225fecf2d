// Decoders of tokenizer.json: ByteLevel, ByteFallback, Fuse, Strip, Replace,
// Metaspace and Sequence. A decoder turns the token strings of an id sequence
// into text.
#ifndef PREFOPT_TRAINER_TOKENIZER_DECODERS_H_
#define PREFOPT_TRAINER_TOKENIZER_DECODERS_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"

namespace prefopt::tokenizer {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings; the decoded text is their concatenation.
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// The decoder at `path`; nullptr for JSON null.
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& json,
                                                      std::string_view path);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_DECODERS_H_
