// The C++ chat templates against transformers' Jinja rendering (recorded in
// tests/fixtures/text_model/expected.json by generate_text_model.py), and
// their edge cases.
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
      const nlohmann::json& texts = want[i]["texts"];
      const std::vector<ChatMessage> prompt = Messages(rows[i]["prompt"]);
      EXPECT_EQ(chat->Render(prompt, true), texts["prompt"].get<std::string>());
      for (const char* response : {"chosen", "rejected"}) {
        std::vector<ChatMessage> conversation = prompt;
        for (const ChatMessage& m : Messages(rows[i][response])) {
          conversation.push_back(m);
        }
        EXPECT_EQ(chat->Render(conversation, false),
                  texts[std::string("prompt_") + response].get<std::string>());
      }
    }
  }
}

TEST(ChatTemplateTest, ChatmlRendersEachMessageAndTheGenerationPrompt) {
  const ChatTemplate chat = Make(DataConfig::CHATML);
  const std::vector<ChatMessage> messages = {{"system", "Be kind."},
                                             {"user", " hi "}};
  EXPECT_EQ(chat.Render(messages, false),
            "<|im_start|>system\nBe kind.<|im_end|>\n"
            "<|im_start|>user\n hi <|im_end|>\n");
  EXPECT_EQ(chat.Render(messages, true),
            "<|im_start|>system\nBe kind.<|im_end|>\n"
            "<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Llama3TrimsContentAndStartsWithBos) {
  const ChatTemplate chat = Make(DataConfig::LLAMA3);
  // U+3000 (ideographic space) and U+0085 are Python white space; U+200B
  // (zero width space) is not.
  EXPECT_EQ(chat.Render({{"user", "\xE3\x80\x80 x \xC2\x85"},
                         {"assistant", "\xE2\x80\x8By"}},
                        true),
            "<|bos|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "\xE2\x80\x8By<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, NeedsAKnownTemplateAndLlama3ABos) {
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
