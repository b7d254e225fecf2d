// Fuzzes the JSONL example readers on the input as a data file: every line
// through data::ParseJsonLine and DetectLineFormat, text and conversational
// lines through TextEncoder::Encode (tests/fixtures/text_model's tokenizer,
// ChatML and Llama 3 templates) and AddExample's truncation, and the whole
// file through ReadExamplesJsonl as preference pairs and as demonstrations.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/examples.h"
#include "trainer/data/text_data.h"

namespace {

using prefopt::data::ExampleKind;

// The fixture model's vocabulary (tests/fixtures/text_model/config.json).
constexpr int kVocabSize = 391;

const std::vector<prefopt::data::TextEncoder>& Encoders() {
  static const auto* encoders = [] {
    auto* made = new std::vector<prefopt::data::TextEncoder>;
    for (prefopt::DataConfig::ChatTemplate chat_template :
         {prefopt::DataConfig::CHATML, prefopt::DataConfig::LLAMA3}) {
      absl::StatusOr<prefopt::data::TextEncoder> encoder =
          prefopt::data::TextEncoder::Create("tests/fixtures/text_model",
                                             chat_template, kVocabSize);
      if (!encoder.ok()) {
        std::fprintf(stderr,
                     "jsonl_fuzzer: run it in its runfiles folder "
                     "(tests/fixtures/text_model): %s\n",
                     encoder.status().ToString().c_str());
        std::abort();
      }
      made->push_back(*std::move(encoder));
    }
    return made;
  }();
  return *encoders;
}

void FuzzLine(const std::string& line, const std::string& where) {
  absl::StatusOr<nlohmann::json> parsed =
      prefopt::data::ParseJsonLine(line, where);
  prefopt::fuzz::CheckErrorNames(parsed.status(), where);
  if (!parsed.ok()) return;
  absl::StatusOr<prefopt::data::LineFormat> format =
      prefopt::data::DetectLineFormat(*parsed, where);
  prefopt::fuzz::CheckErrorNames(format.status(), where);
  if (!format.ok() || *format == prefopt::data::LineFormat::kTokenIds) return;
  for (const prefopt::data::TextEncoder& encoder : Encoders()) {
    for (ExampleKind kind :
         {ExampleKind::kPreference, ExampleKind::kDemonstration}) {
      prefopt::data::Example example;
      absl::Status encoded =
          encoder.Encode(*parsed, *format, kind, where, &example);
      prefopt::fuzz::CheckErrorNames(encoded, where);
      if (!encoded.ok()) continue;
      prefopt::data::Dataset dataset;
      dataset.kind = kind;
      prefopt::data::AddExample(example, {8, 3, prefopt::KEEP_START}, &dataset);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input = prefopt::fuzz::AsView(data, size);
  const std::string path = prefopt::fuzz::WriteScratchFile("data.jsonl", input);
  size_t begin = 0;
  for (int line = 1; begin <= input.size(); ++line) {
    size_t end = input.find('\n', begin);
    if (end == std::string_view::npos) end = input.size();
    FuzzLine(std::string(input.substr(begin, end - begin)),
             absl::StrCat(path, ":", line));
    begin = end + 1;
  }
  for (ExampleKind kind :
       {ExampleKind::kPreference, ExampleKind::kDemonstration}) {
    for (const prefopt::data::TruncationOptions& truncation :
         {prefopt::data::TruncationOptions{},
          prefopt::data::TruncationOptions{6, 2, prefopt::KEEP_END}}) {
      prefopt::fuzz::CheckErrorNames(
          prefopt::data::ReadExamplesJsonl({path}, kind, kVocabSize, truncation)
              .status(),
          path);
    }
  }
  return 0;
}
