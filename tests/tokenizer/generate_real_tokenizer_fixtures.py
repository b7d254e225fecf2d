#!/usr/bin/env python3
"""Fixtures from production tokenizer.json files that PyPI packages ship.

The other fixtures of this folder are small tokenizers trained here; these are
real ones, unchanged, taken from the wheels that carry them:

    claude    anthropic==0.38.0, anthropic/tokenizer.json (the tokenizer the
              Anthropic SDK used for Claude token counts; 65k-token byte-level
              BPE with NFKC)
    deepseek  litellm==1.110.2,
              litellm/litellm_core_utils/tokenizers/deepseek_tokenizer.json
              (DeepSeek-V3's: 128k tokens, a Sequence of Split pre-tokenizers
              whose regexes use \\p{M}, \\p{P}, \\p{S} and CJK classes)

Both packages are MIT licensed. For each, fixtures/<name>/expected.jsonl holds
`tokenizers`' own encoding of every line of corpus.jsonl and corpus_extra.jsonl
(the fields of generate_tokenizer_fixtures.py's expected.jsonl).

Run from the repository root (downloads the two wheels from PyPI, about 20 MB):
    python3 -m venv /opt/tok-venv
    /opt/tok-venv/bin/pip install tokenizers==0.23.3
    /opt/tok-venv/bin/python tests/tokenizer/generate_real_tokenizer_fixtures.py
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import tokenizers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {
    "claude": ("anthropic==0.38.0", "anthropic/tokenizer.json",
               "86b2498c80a049eb6972d3b7c9ec3639"),
    "deepseek": ("litellm==1.110.2",
                 "litellm/litellm_core_utils/tokenizers/deepseek_tokenizer.json",
                 "c815b0701cefb966f50456bea677bae2"),
}


def read_corpus():
    lines = []
    for name in ("corpus.jsonl", "corpus_extra.jsonl"):
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            lines += [json.loads(line) for line in f]
    return lines


def fetch(requirement, member, download_dir):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--quiet", "-d", download_dir, requirement], check=True)
    package = requirement.split("==")[0]
    wheel = next(f for f in os.listdir(download_dir)
                 if f.startswith(package + "-") and f.endswith(".whl"))
    with zipfile.ZipFile(os.path.join(download_dir, wheel)) as z:
        return z.read(member)


def main():
    assert tokenizers.__version__ == "0.23.3", tokenizers.__version__
    corpus = read_corpus()
    with tempfile.TemporaryDirectory() as download_dir:
        for name, (requirement, member, md5) in SOURCES.items():
            data = fetch(requirement, member, download_dir)
            digest = hashlib.md5(data).hexdigest()
            assert digest == md5, (name, digest)
            out = os.path.join(HERE, "fixtures", name)
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "tokenizer.json"), "wb") as f:
                f.write(data)
            tok = Tokenizer.from_str(data.decode("utf-8"))
            with open(os.path.join(out, "expected.jsonl"), "w",
                      encoding="utf-8") as f:
                for line in corpus:
                    ids_special = tok.encode(line, add_special_tokens=True).ids
                    record = {
                        "ids": tok.encode(line, add_special_tokens=False).ids,
                        "ids_special": ids_special,
                        "decoded": tok.decode(ids_special,
                                              skip_special_tokens=False),
                        "decoded_skip": tok.decode(ids_special,
                                                   skip_special_tokens=True),
                    }
                    f.write(json.dumps(record, ensure_ascii=False,
                                       separators=(",", ":")) + "\n")
            print(name, requirement, member, "md5", digest,
                  "vocab", tok.get_vocab_size())


if __name__ == "__main__":
    main()
