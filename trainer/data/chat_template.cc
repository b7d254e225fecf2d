#include "trainer/data/chat_template.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prefopt::data {
namespace {

// Python's str.isspace() code points.
bool IsPythonSpace(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) ||
      (c >= 0x2000 && c <= 0x200A)) {
    return true;
  }
  return c == 0x85 || c == 0xA0 || c == 0x1680 || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

bool IsContinuationByte(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

// The code point of the valid UTF-8 sequence text[begin, end).
char32_t DecodeAt(std::string_view text, size_t begin, size_t end) {
  const auto byte = [&](size_t i) {
    return static_cast<unsigned char>(text[i]);
  };
  const size_t n = end - begin;
  if (n == 1) return byte(begin);
  char32_t c = byte(begin) & (0xFF >> (n + 1));
  for (size_t i = begin + 1; i < end; ++i) c = (c << 6) | (byte(i) & 0x3F);
  return c;
}

}  // namespace

std::string_view PythonStrip(std::string_view text, bool left, bool right) {
  if (left) {
    size_t begin = 0;
    while (begin < text.size()) {
      size_t end = begin + 1;
      while (end < text.size() && IsContinuationByte(text[end])) ++end;
      if (!IsPythonSpace(DecodeAt(text, begin, end))) break;
      begin = end;
    }
    text.remove_prefix(begin);
  }
  if (right) {
    size_t end = text.size();
    while (end > 0) {
      size_t begin = end - 1;
      while (begin > 0 && IsContinuationByte(text[begin])) --begin;
      if (!IsPythonSpace(DecodeAt(text, begin, end))) break;
      end = begin;
    }
    text = text.substr(0, end);
  }
  return text;
}

bool IsKnownChatRole(std::string_view role) {
  return role == "system" || role == "user" || role == "assistant" ||
         role == "tool";
}

std::string ChatTemplateName(DataConfig::ChatTemplate kind) {
  return DataConfig::ChatTemplate_Name(kind);
}

absl::StatusOr<ChatTemplate> ChatTemplate::Create(DataConfig::ChatTemplate kind,
                                                  std::string bos_token) {
  if (kind != DataConfig::CHATML && kind != DataConfig::LLAMA3) {
    return absl::InvalidArgumentError(
        absl::StrCat("no chat template named ", ChatTemplateName(kind),
                     " (expected CHATML or LLAMA3)"));
  }
  if (kind == DataConfig::LLAMA3 && bos_token.empty()) {
    return absl::InvalidArgumentError(
        "the LLAMA3 chat template needs the tokenizer's BOS token, which it "
        "writes first, but the tokenizer names none");
  }
  return ChatTemplate(kind, std::move(bos_token));
}

std::vector<std::string> ChatTemplate::SpecialTokens() const {
  if (kind_ == DataConfig::CHATML) return {"<|im_start|>", "<|im_end|>"};
  return {bos_token_, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
}

std::string ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                 bool add_generation_prompt) const {
  std::string out;
  if (kind_ == DataConfig::CHATML) {
    for (const ChatMessage& m : messages) {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content,
                      "<|im_end|>\n");
    }
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += bos_token_;
    const std::string_view content =
        PythonStrip(messages[i].content, /*left=*/true, /*right=*/true);
    absl::StrAppend(
        &out, "<|start_header_id|>", messages[i].role, "<|end_header_id|>\n\n",
        absl::string_view(content.data(), content.size()), "<|eot_id|>");
  }
  if (add_generation_prompt) {
    out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

}  // namespace prefopt::data
