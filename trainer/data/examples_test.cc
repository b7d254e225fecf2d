// Reading pre-tokenized JSONL (pairs and demonstrations): truncation as
// documented, and every kind of bad input reported with its file, line and
// field.
#include "trainer/data/examples.h"

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
  auto ds = ReadExamplesJsonl({path}, ExampleKind::kPreference, 10, Trunc(100));
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->examples.size(), 2u);
  EXPECT_EQ(ds->examples[0].rejected, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(ds->examples[1].source, path + ":3");
  EXPECT_EQ(ds->identical_responses, 1);
}

TEST(PreferenceData, TruncatesPromptThenResponsesAndDropsWhatCannotFit) {
  Example p;
  p.prompt = {1, 2, 3, 4, 5};
  p.chosen = {6, 7, 8};
  p.rejected = {9};
  bool truncated = false;
  Example keep_end = p;
  ASSERT_TRUE(TruncateExample(Trunc(5, 3), &keep_end, &truncated));
  EXPECT_TRUE(truncated);
  EXPECT_EQ(keep_end.prompt, (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(keep_end.chosen, (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(keep_end.rejected, (std::vector<int32_t>{9}));
  Example keep_start = p;
  ASSERT_TRUE(
      TruncateExample(Trunc(5, 3, KEEP_START), &keep_start, &truncated));
  EXPECT_EQ(keep_start.prompt, (std::vector<int32_t>{1, 2, 3}));
  Example no_room = p;
  EXPECT_FALSE(TruncateExample(Trunc(5), &no_room, &truncated));

  const std::string path = Write(
      "long.jsonl",
      "{\"prompt_ids\": [1, 2, 3, 4, 5], \"chosen_ids\": [1], "
      "\"rejected_ids\": [2]}\n"
      "{\"prompt_ids\": [1], \"chosen_ids\": [1], \"rejected_ids\": [2]}\n");
  auto ds = ReadExamplesJsonl({path}, ExampleKind::kPreference, 10, Trunc(4));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->examples.size(), 1u);
  EXPECT_EQ(ds->dropped_too_long, 1);
}

struct BadCase {
  const char* name;
  std::string line;
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
  auto ds = ReadExamplesJsonl({path}, ExampleKind::kPreference, 10, Trunc(100));
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
                "\"chosen_ids\" is empty"},
        // nlohmann's out_of_range, not a parse_error: was uncaught.
        BadCase{"number_overflow",
                "{\"prompt_ids\": [1e400], \"chosen_ids\": [2], "
                "\"rejected_ids\": [3]}",
                "invalid JSON"},
        BadCase{"deep_nesting",
                "{\"prompt_ids\": " + std::string(100000, '[') + "1" +
                    std::string(100000, ']') + "}",
                ":2:column 271: JSON nested deeper than 256 levels"}),
    [](const ::testing::TestParamInfo<BadCase>& info) {
      return std::string(info.param.name);
    });

TEST(PreferenceData, DemonstrationsWithContextAndShapeMismatch) {
  const std::string path =
      Write("demos.jsonl",
            "{\"context_ids\": [9, 9], \"prompt_ids\": [1], "
            "\"completion_ids\": [2, 3, 4]}\n"
            "{\"prompt_ids\": [1], \"completion_ids\": [2]}\n");
  auto ds =
      ReadExamplesJsonl({path}, ExampleKind::kDemonstration, 10, Trunc(5));
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->examples.size(), 2u);
  EXPECT_EQ(ds->examples[0].context, (std::vector<int32_t>{9, 9}));
  // context + prompt leave room for 2 of the 3 completion tokens.
  EXPECT_EQ(ds->examples[0].chosen, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(ds->examples[0].num_responses(), 1);
  EXPECT_EQ(ds->truncated, 1);

  auto wrong =
      ReadExamplesJsonl({path}, ExampleKind::kPreference, 10, Trunc(5));
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find(
                "\"completion_ids\" belongs to demonstrations"),
            std::string::npos)
      << wrong.status();
}

TEST(PreferenceData, PreferenceFractionIsReadAndChecked) {
  const std::string ok =
      Write("frac.jsonl",
            "{\"prompt_ids\": [1], \"chosen_ids\": [2], \"rejected_ids\": [3], "
            "\"preference_fraction\": 0.75}\n");
  auto ds = ReadExamplesJsonl({ok}, ExampleKind::kPreference, 10, Trunc(5));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_FLOAT_EQ(ds->examples[0].preference_fraction, 0.75f);
  const std::string bad =
      Write("badfrac.jsonl",
            "{\"prompt_ids\": [1], \"chosen_ids\": [2], \"rejected_ids\": [3], "
            "\"preference_fraction\": 1.5}\n");
  auto err = ReadExamplesJsonl({bad}, ExampleKind::kPreference, 10, Trunc(5));
  ASSERT_FALSE(err.ok());
  EXPECT_NE(err.status().message().find("preference_fraction"),
            std::string::npos);
}

TEST(UnpairedData, KlCompletionsAreRotatedWithinRunsAndCutAfterTheirPrompt) {
  Dataset ds;
  ds.kind = ExampleKind::kUnpaired;
  const TruncationOptions trunc = Trunc(4);
  auto add = [&](std::vector<int32_t> prompt, std::vector<int32_t> completion,
                 bool label) {
    Example ex;
    ex.prompt = std::move(prompt);
    ex.chosen = std::move(completion);
    ex.label = label;
    AddExample(std::move(ex), trunc, &ds);
  };
  add({1, 1, 1}, {2, 3, 4, 5}, true);  // its completion is cut to {2}
  add({1}, {6}, false);
  add({1}, {7, 8}, true);  // a run of one: its own completion
  EXPECT_EQ(ds.truncated, 1);
  AttachKlCompletions(/*kl_chunk=*/2, trunc, &ds.examples);
  EXPECT_EQ(ds.examples[0].chosen, (std::vector<int32_t>{2}));
  EXPECT_EQ(ds.examples[0].rejected, (std::vector<int32_t>{6}));
  // TRL cuts the whole neighbouring completion after this example's prompt,
  // not the one cut after the neighbour's.
  EXPECT_EQ(ds.examples[1].rejected, (std::vector<int32_t>{2, 3, 4}));
  EXPECT_EQ(ds.examples[2].rejected, (std::vector<int32_t>{7, 8}));
  EXPECT_TRUE(ds.examples[0].label);
  EXPECT_FALSE(ds.examples[1].label);
}

TEST(UnpairedData, ReadsLabelsAndRefusesOtherShapes) {
  const std::string path =
      Write("unpaired.jsonl",
            "{\"prompt_ids\": [1], \"completion_ids\": [2, 3], \"label\": "
            "true}\n"
            "{\"prompt_ids\": [4], \"completion_ids\": [5], \"label\": "
            "false}\n");
  auto ds = ReadExamplesJsonl({path}, ExampleKind::kUnpaired, 10, Trunc(5));
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->examples.size(), 2u);
  EXPECT_TRUE(ds->examples[0].label);
  EXPECT_FALSE(ds->examples[1].label);
  EXPECT_EQ(ds->examples[0].num_responses(), 1);
  auto pairs =
      ReadExamplesJsonl({path}, ExampleKind::kPreference, 10, Trunc(5));
  ASSERT_FALSE(pairs.ok());
  EXPECT_NE(pairs.status().message().find(
                path + ":1: field \"label\" belongs to unpaired examples"),
            std::string::npos)
      << pairs.status();
}

TEST(PreferenceData, MissingFileIsNamed) {
  auto ds = ReadExamplesJsonl({"/nonexistent/pairs.jsonl"},
                              ExampleKind::kPreference, 10, Trunc(10));
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("/nonexistent/pairs.jsonl"),
            std::string::npos);
}

}  // namespace
}  // namespace prefopt::data
