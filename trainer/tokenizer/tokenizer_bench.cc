// Load time and encode throughput, one thread: each fixture tokenizer.json
// loaded (best of three), then the corpus of tests/tokenizer repeated to at
// least 5 MB, encoded line by line (no special tokens); the best of three
// passes. tests/tokenizer/bench_tokenizers.py measures the Python
// `tokenizers` library on the same files and text.
//
//   bazel run //trainer/tokenizer:tokenizer_bench [-- FIXTURE_DIR [MIN_MB]]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "trainer/tokenizer/tokenizer.h"

namespace prefopt::tokenizer {
namespace {

int Run(const std::string& dir, double min_megabytes) {
  std::ifstream corpus_file(dir + "/corpus.jsonl");
  if (!corpus_file) {
    std::fprintf(stderr, "cannot open %s/corpus.jsonl\n", dir.c_str());
    return 1;
  }
  std::vector<std::string> corpus;
  std::string line;
  while (std::getline(corpus_file, line)) {
    corpus.push_back(nlohmann::json::parse(line).get<std::string>());
  }
  std::vector<std::string> lines;
  size_t bytes = 0;
  while (bytes < min_megabytes * 1e6) {
    for (const std::string& text : corpus) {
      lines.push_back(text);
      bytes += text.size();
    }
  }
  std::printf("text: %zu lines, %.2f MB (corpus repeated)\n", lines.size(),
              bytes / 1e6);

  for (const char* name : {"claude", "deepseek", "gpt2_style", "llama3_style",
                           "qwen2_style", "llama2_style"}) {
    const std::string path =
        dir + "/fixtures/" + std::string(name) + "/tokenizer.json";
    absl::StatusOr<Tokenizer> tokenizer = absl::UnknownError("not loaded");
    double load_seconds = 1e30;
    for (int pass = 0; pass < 3; ++pass) {
      const auto start = std::chrono::steady_clock::now();
      tokenizer = Tokenizer::FromFile(path);
      const std::chrono::duration<double> elapsed =
          std::chrono::steady_clock::now() - start;
      load_seconds = std::min(load_seconds, elapsed.count());
    }
    if (!tokenizer.ok()) {
      std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str());
      return 1;
    }
    double best_seconds = 1e30;
    size_t tokens = 0;
    for (int pass = 0; pass < 3; ++pass) {
      tokens = 0;
      const auto start = std::chrono::steady_clock::now();
      for (const std::string& text : lines) {
        absl::StatusOr<std::vector<int32_t>> ids =
            tokenizer->Encode(text, false);
        if (!ids.ok()) {
          std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
          return 1;
        }
        tokens += ids->size();
      }
      const std::chrono::duration<double> elapsed =
          std::chrono::steady_clock::now() - start;
      best_seconds = std::min(best_seconds, elapsed.count());
    }
    std::printf(
        "%-13s load %6.3f s  encode %8.1f MB/s  %6.2f M tokens/s  (%zu "
        "tokens, %.3f s)\n",
        name, load_seconds, bytes / 1e6 / best_seconds,
        tokens / 1e6 / best_seconds, tokens, best_seconds);
  }
  return 0;
}

}  // namespace
}  // namespace prefopt::tokenizer

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "tests/tokenizer";
  const double min_megabytes = argc > 2 ? std::atof(argv[2]) : 5.0;
  return prefopt::tokenizer::Run(dir, min_megabytes);
}
