// GPT-2's reversible byte <-> character mapping ("bytes_to_unicode"): every
// byte becomes a printable character, so byte-level BPE vocabularies are
// plain strings. Printable Latin-1 bytes map to themselves; the others map to
// U+0100 upwards in byte order.
#ifndef PREFOPT_TRAINER_TOKENIZER_BYTE_LEVEL_H_
#define PREFOPT_TRAINER_TOKENIZER_BYTE_LEVEL_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace prefopt::tokenizer {

class ByteLevelAlphabet {
 public:
  // The process-wide tables.
  static const ByteLevelAlphabet& Get();

  // Appends the mapped characters of every byte of `bytes`.
  void Map(std::string_view bytes, std::string* out) const {
    for (const char c : bytes) {
      const Encoded& e = encoded_[static_cast<unsigned char>(c)];
      out->append(e.bytes, e.length);
    }
  }

  // The byte a mapped character stands for, or -1 for any other character.
  int ByteOf(char32_t c) const {
    return c < byte_of_.size() ? byte_of_[c] : -1;
  }

 private:
  ByteLevelAlphabet();

  struct Encoded {
    char bytes[2];
    uint8_t length;
  };
  std::array<Encoded, 256> encoded_;
  // Mapped characters are below U+0144.
  std::array<int16_t, 0x144> byte_of_;
};

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_BYTE_LEVEL_H_
