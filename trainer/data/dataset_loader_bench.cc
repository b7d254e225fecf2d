// Tokenization throughput of LoadDataset: writes a text preference JSONL of
// about --megabytes MB (generated words, some non-ASCII), then times the first
// load (tokenize + write the token cache) and a second one (cache only).
//
//   bazel run //trainer/data:dataset_loader_bench --
//       [--tokenizer=PATH] [--megabytes=N] [--dir=DIR]
// (one command line).
//
// The default tokenizer is tests/fixtures/text_model/tokenizer.json; any
// tokenizer.json may be given (e.g. a fixture under tests/tokenizer/). The
// number of threads is OpenMP's (OMP_NUM_THREADS).
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "trainer/data/dataset_loader.h"
#include "trainer/tokenizer/tokenizer.h"

namespace {

constexpr const char* kWords[] = {
    "the",    "model",  "learns",   "from",    "preference", "pairs",
    "which",  "reward", "policy",   "token",   "café",       "naïve",
    "über",   "日本語", "テキスト", "你好",    "😀",          "3.14",
    "2024",   "data",   "shows",    "quickly", "Hello",      "world",
    "(note)", "it's",   "don't",    "value:",  "\\n",        "résumé"};

std::string Sentence(std::mt19937& rng, int words) {
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::string s;
  for (int i = 0; i < words; ++i) {
    if (i > 0) s += ' ';
    s += kWords[pick(rng)];
  }
  return s;
}

std::string Flag(int argc, char** argv, const std::string& name,
                 const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(prefix, 0) == 0) return arg.substr(prefix.size());
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  const std::string tokenizer_path =
      Flag(argc, argv, "tokenizer", "tests/fixtures/text_model/tokenizer.json");
  const double megabytes = std::stod(Flag(argc, argv, "megabytes", "4"));
  const std::string dir =
      Flag(argc, argv, "dir", fs::temp_directory_path() / "prefopt_data_bench");
  fs::remove_all(dir);
  fs::create_directories(dir);

  auto tok = prefopt::tokenizer::Tokenizer::FromFile(tokenizer_path);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  const std::string data = dir + "/pairs.jsonl";
  int64_t lines = 0;
  {
    std::ofstream out(data);
    std::mt19937 rng(1);
    std::uniform_int_distribution<int> length(5, 60);
    while (out.tellp() < static_cast<std::streamoff>(megabytes * 1e6)) {
      out << "{\"prompt\": \"" << Sentence(rng, length(rng))
          << "\", \"chosen\": \" " << Sentence(rng, length(rng))
          << "\", \"rejected\": \" " << Sentence(rng, length(rng)) << "\"}\n";
      ++lines;
    }
  }
  const double bytes = static_cast<double>(fs::file_size(data));

  prefopt::data::DataOptions options;
  options.vocab_size = tok->vocab_size();
  options.truncation.max_length = 1 << 20;
  options.tokenizer_path = tokenizer_path;
  options.cache_dir = dir + "/cache";
  std::printf("tokenizer %s, %d threads, %lld lines, %.2f MB\n",
              tokenizer_path.c_str(), omp_get_max_threads(),
              static_cast<long long>(lines), bytes / 1e6);
  for (const char* pass : {"first (tokenize + write cache)", "cached"}) {
    const auto start = std::chrono::steady_clock::now();
    auto ds = prefopt::data::LoadDataset(
        {data}, prefopt::data::ExampleKind::kPreference, options, nullptr);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (!ds.ok()) {
      std::cerr << ds.status() << "\n";
      return 1;
    }
    int64_t tokens = 0;
    for (const auto& ex : ds->examples) {
      tokens += ex.prompt.size() + ex.chosen.size() + ex.rejected.size();
    }
    std::printf("%-32s %7.3f s  %8.2f MB/s  %10.0f examples/s  %lld tokens\n",
                pass, seconds, bytes / 1e6 / seconds,
                static_cast<double>(ds->examples.size()) / seconds,
                static_cast<long long>(tokens));
  }
  fs::remove_all(dir);
  return 0;
}
