// Reading pre-tokenized preference JSONL: truncation as documented, and every
// kind of bad input reported with its file, line and field.
#include "trainer/data/preference_data.h"

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"

namespace prefopt::data {
namespace {

std::string Write(const std::string& name, const std::string& text) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TruncationOptions Trunc(int max_length, int max_prompt = 0,
                        TruncationMode mode = KEEP_END) {
  TruncationOptions t;
  t.max_length = max_length;
  t.max_prompt_length = max_prompt;
  t.mode = mode;
  return t;
}

TEST(PreferenceData, ReadsPairsAndSkipsBlankLines) {
  const std::string path = Write("ok.jsonl",
                                 "{\"prompt_ids\": [1, 2], \"chosen_ids\": "
                                 "[3], \"rejected_ids\": [4, 5]}\n"
                                 "\n"
                                 "{\"prompt_ids\": [6], \"chosen_ids\": [7, "
                                 "8], \"rejected_ids\": [7, 8]}\n");
  auto ds = ReadPreferenceJsonl({path}, 10, Trunc(100));
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->pairs.size(), 2u);
  EXPECT_EQ(ds->pairs[0].rejected, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(ds->pairs[1].source, path + ":3");
  EXPECT_EQ(ds->identical_responses, 1);
}

TEST(PreferenceData, TruncatesPromptThenResponsesAndDropsWhatCannotFit) {
  PreferencePair p{{1, 2, 3, 4, 5}, {6, 7, 8}, {9}, ""};
  bool truncated = false;
  PreferencePair keep_end = p;
  ASSERT_TRUE(TruncatePair(Trunc(5, 3), &keep_end, &truncated));
  EXPECT_TRUE(truncated);
  EXPECT_EQ(keep_end.prompt, (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(keep_end.chosen, (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(keep_end.rejected, (std::vector<int32_t>{9}));
  PreferencePair keep_start = p;
  ASSERT_TRUE(TruncatePair(Trunc(5, 3, KEEP_START), &keep_start, &truncated));
  EXPECT_EQ(keep_start.prompt, (std::vector<int32_t>{1, 2, 3}));
  PreferencePair no_room = p;
  EXPECT_FALSE(TruncatePair(Trunc(5), &no_room, &truncated));

  const std::string path = Write(
      "long.jsonl",
      "{\"prompt_ids\": [1, 2, 3, 4, 5], \"chosen_ids\": [1], "
      "\"rejected_ids\": [2]}\n"
      "{\"prompt_ids\": [1], \"chosen_ids\": [1], \"rejected_ids\": [2]}\n");
  auto ds = ReadPreferenceJsonl({path}, 10, Trunc(4));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->pairs.size(), 1u);
  EXPECT_EQ(ds->dropped_too_long, 1);
}

struct BadCase {
  const char* name;
  const char* line;
  const char* expected;  // substring of the error
};

class PreferenceDataBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(PreferenceDataBadInput, NamesFileLineAndField) {
  const BadCase& c = GetParam();
  const std::string path =
      Write(std::string(c.name) + ".jsonl",
            std::string("{\"prompt_ids\": [1], \"chosen_ids\": [2], "
                        "\"rejected_ids\": [3]}\n") +
                c.line + "\n");
  auto ds = ReadPreferenceJsonl({path}, 10, Trunc(100));
  ASSERT_FALSE(ds.ok());
  const std::string msg(ds.status().message());
  EXPECT_NE(msg.find(path + ":2"), std::string::npos) << msg;
  EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, PreferenceDataBadInput,
    ::testing::Values(
        BadCase{"malformed", "{\"prompt_ids\": [1,", "malformed JSON"},
        BadCase{"not_object", "[1, 2]", "expected a JSON object"},
        BadCase{"missing", "{\"prompt_ids\": [1], \"chosen_ids\": [2]}",
                "missing field \"rejected_ids\""},
        BadCase{
            "not_array",
            "{\"prompt_ids\": 1, \"chosen_ids\": [2], \"rejected_ids\": [3]}",
            "\"prompt_ids\" must be an array"},
        BadCase{"not_int",
                "{\"prompt_ids\": [1], \"chosen_ids\": [2.5], "
                "\"rejected_ids\": [3]}",
                "\"chosen_ids\"[0] must be an integer"},
        BadCase{"out_of_vocab",
                "{\"prompt_ids\": [1], \"chosen_ids\": [2], "
                "\"rejected_ids\": [10]}",
                "outside the model's vocabulary [0, 10)"},
        BadCase{"negative",
                "{\"prompt_ids\": [-1], \"chosen_ids\": [2], "
                "\"rejected_ids\": [3]}",
                "\"prompt_ids\"[0] = -1"},
        BadCase{"empty_response",
                "{\"prompt_ids\": [1], \"chosen_ids\": [], "
                "\"rejected_ids\": [3]}",
                "\"chosen_ids\" is empty"}),
    [](const ::testing::TestParamInfo<BadCase>& info) {
      return std::string(info.param.name);
    });

TEST(PreferenceData, MissingFileIsNamed) {
  auto ds = ReadPreferenceJsonl({"/nonexistent/pairs.jsonl"}, 10, Trunc(10));
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("/nonexistent/pairs.jsonl"),
            std::string::npos);
}

}  // namespace
}  // namespace prefopt::data
