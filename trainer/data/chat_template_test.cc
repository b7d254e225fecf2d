// The C++ chat templates against transformers' Jinja rendering and TRL's
// prompt/response split (recorded in tests/fixtures/text_model/expected.json
// by generate_text_model.py), and their edge cases.
#include "trainer/data/chat_template.h"

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace prefopt::data {
namespace {

constexpr char kFixture[] = "tests/fixtures/text_model/";

std::vector<ChatMessage> Messages(const nlohmann::json& list) {
  std::vector<ChatMessage> out;
  for (const nlohmann::json& m : list) {
    out.push_back(
        {m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

ChatTemplate Make(DataConfig::ChatTemplate kind) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Create(kind, "<|bos|>");
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(ChatTemplateTest, MatchesTrlOnTheFixture) {
  std::ifstream data(std::string(kFixture) + "pref_chat.jsonl");
  std::ifstream expected_file(std::string(kFixture) + "expected.json");
  ASSERT_TRUE(data.good() && expected_file.good());
  const nlohmann::json expected = nlohmann::json::parse(expected_file);
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(data, line)) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 5u);
  for (const auto& [name, kind] : {std::pair{"CHATML", DataConfig::CHATML},
                                   std::pair{"LLAMA3", DataConfig::LLAMA3}}) {
    absl::StatusOr<ChatTemplate> chat =
        ChatTemplate::Create(kind, "<|begin_of_text|>");
    ASSERT_TRUE(chat.ok()) << chat.status();
    const nlohmann::json& want = expected["pref_chat"][name];
    ASSERT_EQ(want.size(), rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      SCOPED_TRACE(std::string(name) + " row " + std::to_string(i));
      absl::StatusOr<RenderedExample> got = chat->RenderExample(
          Messages(rows[i]["prompt"]),
          {Messages(rows[i]["chosen"]), Messages(rows[i]["rejected"])});
      ASSERT_TRUE(got.ok()) << got.status();
      const nlohmann::json& texts = want[i]["texts"];
      EXPECT_EQ(got->prompt, texts["prompt"].get<std::string>());
      EXPECT_EQ(got->responses[0], texts["chosen"].get<std::string>());
      EXPECT_EQ(got->responses[1], texts["rejected"].get<std::string>());
    }
  }
}

TEST(ChatTemplateTest, ChatmlRendersEachMessageAndTheGenerationPrompt) {
  const ChatTemplate chat = Make(DataConfig::CHATML);
  const std::vector<ChatMessage> messages = {{"system", "Be kind."},
                                             {"user", " hi "}};
  EXPECT_EQ(chat.Render(messages, false, false),
            "<|im_start|>system\nBe kind.<|im_end|>\n"
            "<|im_start|>user\n hi <|im_end|>\n");
  EXPECT_EQ(chat.Render(messages, true, false),
            "<|im_start|>system\nBe kind.<|im_end|>\n"
            "<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\n");
  // The final message is continued: cut right after its content.
  EXPECT_EQ(chat.Render({{"user", "a"}, {"assistant", "b "}}, false, true),
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb ");
}

TEST(ChatTemplateTest, Llama3TrimsContentAndStartsWithBos) {
  const ChatTemplate chat = Make(DataConfig::LLAMA3);
  // U+3000 (ideographic space) and U+0085 are Python white space; U+200B
  // (zero width space) is not.
  EXPECT_EQ(chat.Render({{"user", "\xE3\x80\x80 x \xC2\x85"},
                         {"assistant", "\xE2\x80\x8By"}},
                        true, false),
            "<|bos|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "\xE2\x80\x8By<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // transformers strips the white space before the cut when the template
  // trimmed the tag's trailing space.
  EXPECT_EQ(chat.Render({{"assistant", "  go on,  "}}, false, true),
            "<|bos|><|start_header_id|>assistant<|end_header_id|>\n\ngo on,");
  EXPECT_EQ(chat.Render({{"assistant", "   "}}, false, true),
            "<|bos|><|start_header_id|>assistant<|end_header_id|>");
}

TEST(ChatTemplateTest, CommonPrefixEndsOnACodePointBoundary) {
  // "é" is C3 A9 and "è" C3 A8: Python's common prefix of "xé" and "xè" is
  // "x", not "x\xC3".
  EXPECT_EQ(CommonPrefixLength("x\xC3\xA9", "x\xC3\xA8"), 1u);
  EXPECT_EQ(CommonPrefixLength("x\xC3\xA9y", "x\xC3\xA9z"), 3u);
  EXPECT_EQ(CommonPrefixLength("ab", "abc"), 2u);
  EXPECT_EQ(CommonPrefixLength("\xF0\x9F\x98\x80", "\xF0\x9F\x98\x81"), 0u);
}

TEST(ChatTemplateTest, PromptMustEndWithUserToolOrAssistant) {
  const ChatTemplate chat = Make(DataConfig::CHATML);
  absl::StatusOr<RenderedExample> got =
      chat.RenderExample({{"system", "s"}}, {{{"assistant", "x"}}});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("role \"system\""),
            absl::string_view::npos)
      << got.status();
  EXPECT_FALSE(ChatTemplate::Create(DataConfig::NONE, "").ok());
  EXPECT_FALSE(ChatTemplate::Create(DataConfig::LLAMA3, "").ok());
}

TEST(ChatTemplateTest, PythonStripMatchesStrStrip) {
  EXPECT_EQ(PythonStrip(" \t\na b\r\x0b\x0c", true, true), "a b");
  EXPECT_EQ(PythonStrip("\xE2\x80\xA8x\xE2\x80\x80", true, false),
            "x\xE2\x80\x80");
  EXPECT_EQ(PythonStrip("\xE2\x80\xA8x\xE2\x80\x80", false, true),
            "\xE2\x80\xA8x");
  EXPECT_EQ(PythonStrip("\xE2\x80\x8B", true, true), "\xE2\x80\x8B");
  EXPECT_EQ(PythonStrip("   ", true, true), "");
}

}  // namespace
}  // namespace prefopt::data
