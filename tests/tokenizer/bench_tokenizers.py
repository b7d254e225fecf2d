#!/usr/bin/env python3
"""Load time and encode throughput of the Hugging Face `tokenizers` library,
one thread.

The counterpart of //trainer/tokenizer:tokenizer_bench: the same text (the
corpus repeated to at least 5 MB), the same fixture tokenizers, no special
tokens, best of three passes; measured once with `encode` line by line and
once with `encode_batch` over all lines.

Command (from the repository root):

    /opt/tok-venv/bin/python tests/tokenizer/bench_tokenizers.py

Versions used for the numbers in README.md: Python 3.11.7, tokenizers 0.23.3.
"""

import json
import os
import sys
import time

# One thread: both must be set before `tokenizers` is imported.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["claude", "deepseek", "gpt2_style", "llama3_style", "qwen2_style",
         "llama2_style"]


def best_of_three(run):
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        tokens = run()
        best = min(best, time.perf_counter() - start)
    return best, tokens


def main():
    min_megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    with open(os.path.join(HERE, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    lines, size = [], 0
    while size < min_megabytes * 1e6:
        for text in corpus:
            lines.append(text)
            size += len(text.encode("utf-8"))
    print("text: %d lines, %.2f MB (corpus repeated)" % (len(lines), size / 1e6))
    for name in NAMES:
        path = os.path.join(HERE, "fixtures", name, "tokenizer.json")
        load_seconds, tok = best_of_three(lambda: Tokenizer.from_file(path))
        print("%-13s load %6.3f s" % (name, load_seconds))

        def line_by_line():
            return sum(len(tok.encode(t, add_special_tokens=False).ids)
                       for t in lines)

        def batch():
            return sum(len(e.ids)
                       for e in tok.encode_batch(lines, add_special_tokens=False))

        for mode, run in [("encode", line_by_line), ("encode_batch", batch)]:
            seconds, tokens = best_of_three(run)
            print("%-13s %-12s %8.1f MB/s  %6.2f M tokens/s  (%d tokens, %.3f s)"
                  % (name, mode, size / 1e6 / seconds, tokens / 1e6 / seconds,
                     tokens, seconds))


if __name__ == "__main__":
    main()
