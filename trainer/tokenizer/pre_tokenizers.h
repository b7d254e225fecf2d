// Pre-tokenizers of tokenizer.json: ByteLevel, Split, Digits, Metaspace and
// Sequence. They cut a piece of text into the words the model tokenizes one
// by one.
#ifndef PREFOPT_TRAINER_TOKENIZER_PRE_TOKENIZERS_H_
#define PREFOPT_TRAINER_TOKENIZER_PRE_TOKENIZERS_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"
#include "trainer/tokenizer/regex.h"

namespace prefopt::tokenizer {

// Words: non-empty byte ranges of `text`, in order.
struct Pieces {
  std::string text;
  std::vector<ByteRange> ranges;
  // Whether `text` begins where the text given to Encode begins (and not
  // after an added token), which Metaspace's prepend_scheme "first" asks.
  bool at_input_start = true;

  std::string_view Get(const ByteRange& range) const {
    return std::string_view(text).substr(range.first,
                                         range.second - range.first);
  }
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece of `pieces` further (and may rewrite the text).
  virtual absl::Status PreTokenize(Pieces* pieces) const = 0;
};

// The settings of a Metaspace pre-tokenizer or decoder.
enum class PrependScheme { kAlways, kNever, kFirst };
struct MetaspaceSettings {
  std::string replacement;  // one character, as UTF-8
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;
};

// Reads a Metaspace object at `path` as tokenizers does: prepend_scheme
// defaults to "always", split to true, and add_prefix_space (of files written
// before prepend_scheme existed) may only be false with "never".
absl::StatusOr<MetaspaceSettings> ParseMetaspaceSettings(const Json& json,
                                                         std::string_view path);

// The pre-tokenizer at `path`; nullptr for JSON null.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const Json& json, std::string_view path);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_PRE_TOKENIZERS_H_
