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

// transformers marks the final message with this text to find where it ends.
constexpr std::string_view kContinueTag = "CONTINUE_FINAL_MESSAGE_TAG ";

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

size_t CommonPrefixLength(std::string_view a, std::string_view b) {
  const size_t limit = std::min(a.size(), b.size());
  size_t n = 0;
  while (n < limit && a[n] == b[n]) ++n;
  // Where they differ inside a character, that whole character differs.
  if (n < a.size() && n < b.size()) {
    while (n > 0 && IsContinuationByte(a[n])) --n;
  }
  return n;
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

std::string ChatTemplate::RenderJinja(absl::Span<const ChatMessage> messages,
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

std::string ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                 bool add_generation_prompt,
                                 bool continue_final_message) const {
  if (!continue_final_message || messages.empty()) {
    return RenderJinja(messages, add_generation_prompt);
  }
  // As transformers: render with a tag after the final message's content and
  // cut there. When the template kept the tag's trailing space the cut is
  // exact; when it trimmed it (LLAMA3), transformers also strips the
  // whitespace before the cut.
  std::vector<ChatMessage> tagged(messages.begin(), messages.end());
  tagged.back().content += kContinueTag;
  std::string rendered = RenderJinja(tagged, add_generation_prompt);
  const std::string_view tag_text = PythonStrip(kContinueTag, true, true);
  const size_t tag = rendered.rfind(tag_text);
  // Both templates write every message's content, so the tag is there.
  if (tag == std::string::npos) return rendered;
  if (std::string_view(rendered).substr(tag, kContinueTag.size()) ==
      kContinueTag) {
    rendered.resize(tag);
    return rendered;
  }
  return std::string(PythonStrip(std::string_view(rendered).substr(0, tag),
                                 /*left=*/false, /*right=*/true));
}

absl::StatusOr<RenderedExample> ChatTemplate::RenderExample(
    absl::Span<const ChatMessage> prompt,
    absl::Span<const std::vector<ChatMessage>> responses) const {
  if (prompt.empty()) {
    return absl::InvalidArgumentError("the prompt has no messages");
  }
  const std::string& last_role = prompt.back().role;
  bool add_generation_prompt = false;
  bool continue_final_message = false;
  if (last_role == "user" || last_role == "tool") {
    add_generation_prompt = true;
  } else if (last_role == "assistant") {
    continue_final_message = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "ends with a message of role \"", last_role,
        "\"; the last prompt message must be from \"user\" or \"tool\" (the "
        "response answers it) or \"assistant\" (the response continues it)"));
  }
  RenderedExample out;
  out.prompt = Render(prompt, add_generation_prompt, continue_final_message);
  std::vector<ChatMessage> conversation;
  for (const std::vector<ChatMessage>& response : responses) {
    conversation.assign(prompt.begin(), prompt.end());
    conversation.insert(conversation.end(), response.begin(), response.end());
    const std::string full = Render(conversation, false, false);
    out.prompt.resize(CommonPrefixLength(out.prompt, full));
    out.responses.push_back(full.substr(out.prompt.size()));
  }
  return out;
}

}  // namespace prefopt::data
