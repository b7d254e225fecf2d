// UTF-8 helpers used by the tokenizer: validation, decoding of valid text,
// encoding of code points, and lossy conversion of arbitrary bytes with the
// replacement rules of Rust's String::from_utf8_lossy (which the Hugging Face
// `tokenizers` decoders use).
#ifndef PREFOPT_TRAINER_TOKENIZER_UTF8_H_
#define PREFOPT_TRAINER_TOKENIZER_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace prefopt::tokenizer {

// Length of the longest prefix of `bytes` that is well-formed UTF-8 (no
// overlong forms, surrogates, or code points above U+10FFFF). Equals
// bytes.size() when all of `bytes` is valid.
size_t ValidUtf8Prefix(std::string_view bytes);

// Length in bytes of the character whose first byte is `lead`, for valid
// UTF-8 text.
inline size_t Utf8CharLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the character starting at text[pos] of valid UTF-8 text.
char32_t DecodeUtf8(std::string_view text, size_t pos);

// Decodes the last character of non-empty valid UTF-8 text.
char32_t DecodeLastUtf8(std::string_view text);

// Appends the UTF-8 encoding of the code point `c` (at most U+10FFFF).
void AppendUtf8(char32_t c, std::string* out);

// Converts arbitrary bytes to valid UTF-8, replacing each maximal ill-formed
// subsequence with U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_UTF8_H_
