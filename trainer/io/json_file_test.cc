#include "trainer/io/json_file.h"

#include <string>

#include "gtest/gtest.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using nlohmann::json;
using testing::ErrorContains;
using testing::NewTempDir;
using testing::TestdataPath;
using testing::WriteBytes;

TEST(ReadJsonFileTest, ParseErrorNamesFileLineAndColumn) {
  const std::string path = TestdataPath("bad_configs/not_json/config.json");
  absl::StatusOr<json> value = ReadJsonFile(path);
  EXPECT_EQ(value.status().code(), absl::StatusCode::kInvalidArgument);
  // Line 3 is `  "n_embd": 8,,`; the second comma is column 15.
  EXPECT_TRUE(ErrorContains(value.status(), {path + ":3:15: invalid JSON"}))
      << value.status();
}

TEST(ReadJsonFileTest, ErrorAtEndOfInput) {
  const std::string path = NewTempDir("end_of_input") + "/x.json";
  WriteBytes(path, "{\"a\": [1,\n2");
  EXPECT_TRUE(ErrorContains(ReadJsonFile(path).status(), {path + ":2:2:"}));
  WriteBytes(path, "");
  EXPECT_TRUE(ErrorContains(ReadJsonFile(path).status(), {path + ":1:1:"}));
}

TEST(ReadJsonFileTest, DeepNestingAndHugeNumbersAreErrors) {
  const std::string deep =
      "{\"a\":\n" + std::string(300, '[') + std::string(300, ']') + "}";
  absl::StatusOr<json> nested = ParseJson(deep, "deep.json");
  EXPECT_TRUE(ErrorContains(
      nested.status(), {"deep.json:2:256: JSON nested deeper than 256 levels"}))
      << nested.status();
  // Brackets inside strings do not count.
  EXPECT_TRUE(
      ParseJson("[\"" + std::string(1000, '[') + "\\\"\"]", "s.json").ok());
  absl::StatusOr<json> huge = ParseJson("{\"x\": 1e400}", "huge.json");
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ErrorContains(huge.status(), {"huge.json"})) << huge.status();
}

TEST(ReadJsonFileTest, NulBytesAreErrors) {
  // The parser alone would stop at the NUL and accept the object before it.
  const std::string path = NewTempDir("nul") + "/config.json";
  WriteBytes(path, std::string("{\"n_layer\": 2}\n") + '\0' + "garbage");
  EXPECT_TRUE(
      ErrorContains(ReadJsonFile(path).status(), {path + ":2:1: NUL byte"}));
}

TEST(ReadJsonFileTest, MissingFileIsNotFound) {
  const std::string path = TestdataPath("no_such.json");
  absl::StatusOr<json> value = ReadJsonFile(path);
  EXPECT_EQ(value.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorContains(value.status(), {path}));
}

TEST(ReadJsonFileTest, WriteThenReadRoundTrips) {
  const std::string path = NewTempDir("round_trip") + "/x.json";
  const json value = {{"b", {1, 2.5, nullptr}}, {"a", "text"}};
  ASSERT_TRUE(WriteJsonFile(path, value).ok());
  absl::StatusOr<json> read = ReadJsonFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, value);
  EXPECT_EQ(testing::ReadBytes(path), value.dump(2) + "\n");
}

TEST(GettersTest, ReadTypedFields) {
  const json j = {{"n", 8},       {"big", 18446744073709551615u},
                  {"x", 0.5},     {"s", "gelu_new"},
                  {"flag", true}, {"none", nullptr},
                  {"neg", -3}};
  EXPECT_EQ(*GetInt(j, "n", "f.json"), 8);
  EXPECT_EQ(*GetInt(j, "neg", "f.json"), -3);
  EXPECT_EQ(*GetFloat(j, "x", "f.json"), 0.5);
  EXPECT_EQ(*GetFloat(j, "n", "f.json"), 8.0);
  EXPECT_EQ(*GetString(j, "s", "f.json"), "gelu_new");
  EXPECT_EQ(*GetBool(j, "flag", "f.json"), true);
  EXPECT_EQ(*GetIntOr(j, "absent", "f.json", 7), 7);
  EXPECT_EQ(*GetIntOr(j, "none", "f.json", 7), 7);
  EXPECT_EQ(*GetIntOr(j, "n", "f.json", 7), 8);
  EXPECT_EQ(*GetFloatOr(j, "none", "f.json", 1e-5), 1e-5);
  EXPECT_EQ(*GetStringOr(j, "absent", "f.json", "silu"), "silu");
  EXPECT_EQ(*GetBoolOr(j, "absent", "f.json", true), true);
  EXPECT_EQ(*GetBoolOr(j, "flag", "f.json", false), true);
  EXPECT_TRUE(HasNonNull(j, "n"));
  EXPECT_FALSE(HasNonNull(j, "none"));
  EXPECT_FALSE(HasNonNull(j, "absent"));
}

TEST(GettersTest, ErrorsNameFileFieldAndFoundValue) {
  const json j = {{"n", "8"},
                  {"x", 0.5},
                  {"big", 18446744073709551615u},
                  {"none", nullptr}};
  EXPECT_TRUE(ErrorContains(
      GetInt(j, "n", "dir/config.json").status(),
      {"dir/config.json", "'n'", "an integer", "the string \"8\""}));
  EXPECT_TRUE(ErrorContains(GetInt(j, "x", "f.json").status(),
                            {"f.json", "'x'", "the number 0.5"}));
  EXPECT_TRUE(ErrorContains(GetInt(j, "big", "f.json").status(),
                            {"'big'", "fits in 64 bits"}));
  EXPECT_TRUE(ErrorContains(GetInt(j, "absent", "f.json").status(),
                            {"f.json", "missing required field 'absent'"}));
  EXPECT_TRUE(ErrorContains(GetString(j, "none", "f.json").status(),
                            {"missing required field 'none'"}));
  EXPECT_TRUE(ErrorContains(GetBool(j, "x", "f.json").status(),
                            {"'x'", "true or false"}));
  EXPECT_TRUE(
      ErrorContains(GetFloat(j, "n", "f.json").status(), {"'n'", "a number"}));
  EXPECT_TRUE(ErrorContains(GetStringOr(j, "x", "f.json", "").status(),
                            {"'x'", "a string"}));
  EXPECT_TRUE(ErrorContains(GetIntOr(json::array(), "n", "f.json", 0).status(),
                            {"f.json", "'n'", "found an array"}));
}

}  // namespace
}  // namespace prefopt::io
