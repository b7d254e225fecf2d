#include "trainer/tokenizer/byte_level.h"

#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {

const ByteLevelAlphabet& ByteLevelAlphabet::Get() {
  static const ByteLevelAlphabet* const alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  byte_of_.fill(-1);
  char32_t next_unprintable = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) ||
                           (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const char32_t c =
        printable ? static_cast<char32_t>(b) : next_unprintable++;
    std::string utf8;
    AppendUtf8(c, &utf8);
    Encoded& e = encoded_[b];
    e.length = static_cast<uint8_t>(utf8.size());
    for (size_t i = 0; i < utf8.size(); ++i) e.bytes[i] = utf8[i];
    byte_of_[c] = static_cast<int16_t>(b);
  }
}

}  // namespace prefopt::tokenizer
