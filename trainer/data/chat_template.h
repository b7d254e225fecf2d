// Chat templates written in C++: conversational examples (lists of
// {"role", "content"} messages) become text exactly as transformers'
// apply_chat_template renders the corresponding Jinja template. The Jinja of a
// model's tokenizer_config.json is never evaluated; the config names one of
// these templates (DataConfig.chat_template):
//
// CHATML (plain ChatML, no default system message):
//   {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}
//   {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//
// LLAMA3 (Meta-Llama-3-8B-Instruct's tokenizer_config.json):
//   {% set loop_messages = messages %}{% for message in loop_messages %}
//   {% set content = '<|start_header_id|>' + message['role'] +
//   '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}
//   {% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}
//   {{ content }}{% endfor %}{% if add_generation_prompt %}
//   {{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
//
// (Both written on one line in the fixture's tokenizer_config.json; the line
// breaks here are not part of them.)
#ifndef PREFOPT_TRAINER_DATA_CHAT_TEMPLATE_H_
#define PREFOPT_TRAINER_DATA_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "proto/config.pb.h"

namespace prefopt::data {

struct ChatMessage {
  std::string role;
  std::string content;
};

// The roles a message may have: system, user, assistant, tool.
bool IsKnownChatRole(std::string_view role);
inline constexpr char kKnownChatRoles[] =
    "\"system\", \"user\", \"assistant\" or \"tool\"";

// The name of a template as written in configs ("CHATML").
std::string ChatTemplateName(DataConfig::ChatTemplate kind);

class ChatTemplate {
 public:
  // `bos_token` is the text LLAMA3 writes first (transformers passes the
  // tokenizer's bos_token); CHATML ignores it. NONE is InvalidArgument.
  static absl::StatusOr<ChatTemplate> Create(DataConfig::ChatTemplate kind,
                                             std::string bos_token);

  DataConfig::ChatTemplate kind() const { return kind_; }

  // The special tokens the template writes; the tokenizer must have each as
  // an added token, or they would be tokenized as plain text.
  std::vector<std::string> SpecialTokens() const;

  // transformers' apply_chat_template(messages, tokenize=False,
  // add_generation_prompt).
  std::string Render(absl::Span<const ChatMessage> messages,
                     bool add_generation_prompt) const;

 private:
  ChatTemplate(DataConfig::ChatTemplate kind, std::string bos_token)
      : kind_(kind), bos_token_(std::move(bos_token)) {}

  DataConfig::ChatTemplate kind_;
  std::string bos_token_;
};

// Python's str.strip() (Jinja's `trim` filter): removes the leading and/or
// trailing characters that Python's str.isspace() accepts.
std::string_view PythonStrip(std::string_view text, bool left, bool right);

}  // namespace prefopt::data

#endif  // PREFOPT_TRAINER_DATA_CHAT_TEMPLATE_H_
