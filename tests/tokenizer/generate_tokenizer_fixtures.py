#!/usr/bin/env python3
"""Generates the tokenizer parity fixtures under tests/tokenizer/.

Trains small BPE tokenizers with the Hugging Face `tokenizers` library on text
this script generates (no downloads, no network), writes a corpus of edge-case
lines, and records what `tokenizers` produces for every corpus line, so that
//trainer/tokenizer:tokenizer_parity_test can check the C++ tokenizer against it.

Command (from the repository root; this is how the committed files were made):

    /opt/fixenv/bin/python tests/tokenizer/generate_tokenizer_fixtures.py

Versions used for the committed files: Python 3.11.7, tokenizers 0.22.2.
The output is deterministic for a given `tokenizers` version.

Outputs:
    corpus.jsonl                       one JSON string per line
    fixtures/<name>/tokenizer.json     the trained tokenizer
    fixtures/<name>/expected.jsonl     one JSON object per corpus line:
        ids            encode(text, add_special_tokens=False).ids
        ids_special    encode(text, add_special_tokens=True).ids
        decoded        decode(ids_special, skip_special_tokens=False)
        decoded_skip   decode(ids_special, skip_special_tokens=True)
    fixtures/component_cases.jsonl     single pre-tokenizers, normalizers (the
        four Unicode normalization forms too) and decoders (every Split
        behavior, with and without invert, ...) applied
        to short inputs: {"kind", "config", "input", "output"}.

Fixtures:
    gpt2_style    ByteLevel pre-tokenizer with GPT-2's regex, ByteLevel decoder,
                  `<|endoftext|>` (normalized, as in GPT-2's file), merges in the
                  legacy "a b" string form, and extra added tokens exercising
                  lstrip / rstrip / single_word / normalized.
    llama3_style  Split with Llama 3's regex + ByteLevel(use_regex=false),
                  ignore_merges=true (with whole-word vocab entries that merges
                  cannot reach), TemplateProcessing with `<|begin_of_text|>`,
                  reserved special tokens and `<|eot_id|>`. Largest vocab; the
                  benchmark uses it too.
    qwen2_style   Split with Qwen2's regex + ByteLevel(use_regex=false),
                  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, and the NFC
                  normalizer of Qwen2's files.
    llama2_style  SentencePiece-style BPE as converted Llama 2 / Mistral files
                  are: Prepend + Replace normalizers, no pre-tokenizer,
                  byte_fallback with <0xXX> vocab entries (all but the lead
                  bytes of four-byte characters), fused `<unk>`, decoder
                  Sequence[Replace, ByteFallback, Fuse, Strip].
"""

import json
import os
import random

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, pre_tokenizers, processors, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))

GPT2_REGEX = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
              r"|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = """the of and to in is was he for it with as his on be at by had are but
from or have an they which one you were her all she there would their we him
been has when who will more no if out so said what up its about into than them
can only other new some could time these two may then do first any my now such
like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people
how too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us
great old year off come since against go came right used take three tokenizer
encode decode merge vocabulary training model gradient preference reward policy
reference batch sequence token optimizer checkpoint learning rate loss value
don't can't won't it's he's she's they're we're you're I'm I've we've they've
you'll we'll I'd you'd he'd THE AND IT'S DON'T WE'LL YOU'RE Hello World Python
""".split()

ACCENTED = ("café naïve résumé façade über straße garçon déjà-vu crème brûlée "
            "São Paulo Łódź Dvořák Ångström jalapeño piñata coöperate Ærøskøbing "
            "Ελληνικά Русский язык українська Türkçe Čeština Việt Nam").split()

CJK = ["日本語のテキスト", "中文分词测试", "漢字とひらがな", "한국어 문장입니다",
       "東京都", "你好，世界！", "こんにちは", "トークナイザー", "我爱北京天安门"]

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🧑‍💻", "❤️", "🙂",
         "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚", "𠜎𠜱𠝹", "🀄", "🂡"]

CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if __name__ == \"__main__\":\n    main()",
    "#include <vector>\nint main() { return 0; }",
    "SELECT id, name FROM users WHERE age >= 18;",
    "const x = {a: 1, b: [2, 3]};  // comment",
    "x = [i**2 for i in range(10)]  # squares",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "<div class=\"row\"><span>text</span></div>",
    "$ ls -la /tmp && echo \"done\" | grep -v x",
]

SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|reserved_special_token_2|>", "<|im_start|>", "<|im_end|>",
            "<s>", "</s>", "<unk>"]


def training_text(rng, n_lines):
    """Deterministic pseudo-English, code, numbers and multilingual text."""
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.6:
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
            if rng.random() < 0.3:
                words[0] = words[0].capitalize()
            line = " ".join(words) + rng.choice([".", "!", "?", ",", ";", ""])
        elif kind < 0.7:
            line = rng.choice(CODE)
        elif kind < 0.8:
            line = " ".join(rng.choice(ACCENTED) for _ in range(rng.randint(2, 6)))
        elif kind < 0.87:
            line = rng.choice(CJK) + rng.choice(["", "。", " "]) + rng.choice(CJK)
        elif kind < 0.95:
            line = " ".join(str(rng.randint(0, 10**rng.randint(1, 8)))
                            for _ in range(rng.randint(1, 5)))
        else:
            line = " ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
        lines.append(line)
    return lines


def corpus_lines():
    """The edge-case corpus the parity test runs through every tokenizer."""
    rng = random.Random(1234)
    lines = [
        "",
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "Hello world",
        "Hello world ",
        "Hello world   ",
        " Hello world",
        "   leading spaces and trailing tabs\t\t",
        "line one\nline two\n",
        "windows\r\nline\r\nendings\r\n",
        "mixed \t \n \r\n whitespace\n\n\n  \t",
        "spaces    between     words",
        "tab\tseparated\tvalues\t1\t2",
        "blank lines\n\n\n\nafter",
        "trailing newline and spaces \n  ",
        "He's here. It's done. They're gone. We've won. I'm in. You'll see. "
        "She'd know.",
        "HE'S HERE. IT'S DONE. THEY'RE GONE. WE'VE WON. I'M IN. YOU'LL SEE. "
        "SHE'D KNOW.",
        "He'S It'T They'Re We'Ve I'M You'Ll She'D",
        "don't can't won't shouldn't isn't 'tis 'twas rock'n'roll",
        "'s 't 're 've 'm 'll 'd ' s",
        "the dog's bone, the dogs' bones",
        "Long-s contraction: it\u017ft \u017fhe'\u017f",
        "café naïve résumé façade",
        "cafe\u0301 nai\u0308ve re\u0301sume\u0301 (combining marks)",
        "\u0041\u030a vs \u00c5 vs \u212b",
        "Ωmega Ψ ñ Ñ ß ẞ ÿ Ÿ œ Œ",
        "Русский текст с пробелами",
        "Ελληνικά κείμενα",
        "עברית וערבית: العربية",
        "हिन्दी देवनागरी",
        "ไทย ภาษา",
        "日本語のテキストです。",
        "中文分词测试，标点符号！",
        "한국어 문장입니다.",
        "混合 mixed テキスト text 123",
        "😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵",
        "emoji😀glued👍🏽to🧑‍💻words",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 𠜎𠜱𠝹 🀄🂡",
        "zero\u200bwidth\u200cjoiner\u200dtest",
        "nbsp\u00a0here and\u2009thin\u2003em\u3000ideographic",
        "line\u2028separator\u2029paragraph\u0085nel",
        "mongolian\u180evowel\u180e\u180eseparator !\u180e",
        "Unicode 15/16 letters and digits: a\u1c89's \U000105c0'S "
        "\U0002ebf0\U0002ebf1 \U00010d40\U00010d41\U00010d42\U00010d43",
        "control\x01\x02\x1b[0mchars\x7f\x1c\x1f",
        "soft\u00adhyphen and replacement \ufffd char",
        "BOM\ufeffinside",
        "Roman Ⅻ and fractions ½ ¾ and superscripts ² ³ and circled ①②",
        "Arabic-Indic digits ٠١٢٣٤٥٦٧٨٩ and Devanagari ०१२",
        "full-width ＡＢＣ１２３！",
        "math: ∀x ∈ ℝ, x² ≥ 0; ∑ᵢ aᵢ ≤ ∞",
        "price: $1,234.56 (€99,99) ¥1000 £5",
        "email me at someone@example.com or visit https://example.org/a?b=c&d=e",
        "!!! ??? ... --- *** ### @@@",
        "(parentheses) [brackets] {braces} <angles>",
        "\"double\" 'single' `backtick` «guillemets» “curly” ‘quotes’",
        "a.b,c;d:e!f?g",
        "    indented code\n        more indented\n",
    ]
    lines += [CODE[i] for i in range(len(CODE))]
    digits = "12345678901234567890"
    for n in range(1, 21):
        lines.append(digits[:n])
        lines.append("x" + digits[:n] + "y")
        lines.append("value " + digits[::-1][:n] + " units")
    lines += [
        "3.14159 2.71828 1e10 -42 +7 0x1F 0b1010 1_000_000",
        "2024-01-31T23:59:59Z 12:30pm 1/2/3",
        "Hello<|endoftext|>world",
        "<|endoftext|>",
        "<|endoftext|><|endoftext|>",
        " <|endoftext|> ",
        "text <|endoftext|>\n<|endoftext|> more",
        "<|endoftext|",
        "|endoftext|>",
        "<|endoftext|>>",
        "<<|endoftext|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Hi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello."
        "<|eot_id|>",
        "<|begin_of_text|>Once upon a time<|end_of_text|>",
        "<|reserved_special_token_0|><|reserved_special_token_1|>"
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_10|> is not in the vocabulary",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
        "Hi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|><|im_start|>",
        "<s> bos and </s> eos and <unk> unk",
        "<s>hello</s>",
        "mask tests: <mask> a <mask>b c<mask>  <mask>  d",
        "word tests: hello_world xhello_world hello_worldx hello_world.",
        "strip tests: a  xyz  b axyzb  xyz",
        "<0x41> looks like a byte token",
        "▁ is the SentencePiece meta symbol ▁▁",
    ]
    for _ in range(120):
        kind = rng.random()
        if kind < 0.5:
            words = [rng.choice(WORDS + ACCENTED) for _ in range(rng.randint(3, 25))]
            line = " ".join(words)
        elif kind < 0.7:
            parts = [rng.choice(WORDS), rng.choice(CJK), rng.choice(EMOJI),
                     str(rng.randint(0, 10**9)), rng.choice(SPECIALS),
                     rng.choice(ACCENTED)]
            rng.shuffle(parts)
            line = rng.choice(["", " ", "\n"]).join(parts)
        elif kind < 0.85:
            line = rng.choice(CODE) + rng.choice(["", "\n", "  \n", "\r\n"])
        else:
            ws = ["", " ", "  ", "\t", "\n", "\r\n", " \n ", "   "]
            line = "".join(rng.choice(ws) + rng.choice(WORDS + CJK + EMOJI)
                           for _ in range(rng.randint(2, 10))) + rng.choice(ws)
        lines.append(line)
    return lines


def train(tok, vocab_size, special_tokens, alphabet, max_codepoint=None):
    """Trains on generated text; characters above max_codepoint are dropped
    from it, so they stay out of the vocabulary."""
    rng = random.Random(42)
    text = training_text(rng, 30000)
    if max_codepoint is not None:
        text = ["".join(c for c in line if ord(c) <= max_codepoint)
                for line in text]
    tok.train_from_iterator(
        text, trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=special_tokens,
                                  initial_alphabet=alphabet,
                                  show_progress=False))


def gpt2_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, 2000, [], pre_tokenizers.ByteLevel.alphabet())
    # GPT-2's file marks <|endoftext|> normalized; it is still never split.
    tok.add_special_tokens([AddedToken("<|endoftext|>", normalized=True)])
    tok.add_tokens([
        AddedToken("<mask>", lstrip=True, normalized=False),
        AddedToken("hello_world", single_word=True, normalized=False),
        AddedToken("xyz", lstrip=True, rstrip=True, normalized=True),
    ])
    spec = json.loads(tok.to_str())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    return spec


def llama3_style():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    train(tok, 3000, [], pre_tokenizers.ByteLevel.alphabet())
    # Whole words that the merges cannot build: only ignore_merges reaches
    # them. They go in before the special tokens, which follow the vocabulary.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for word in ["Ġunits", "Ġupon", "Ġwhitespace", "Ġseparated", "Ġexample"]:
        assert word not in vocab, word
        vocab[word] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(spec))
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    specials += ["<|reserved_special_token_%d|>" % i for i in range(3)]
    specials += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return json.loads(tok.to_str())


def qwen2_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, 2500, [], pre_tokenizers.ByteLevel.alphabet())
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    # Qwen2's files normalize to NFC. Set after training, so the vocabulary
    # is the one trained without it.
    tok.normalizer = normalizers.NFC()
    return json.loads(tok.to_str())


def llama2_style():
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    # Train on "▁"-prefixed words, as SentencePiece does; encoding then runs
    # with the normalizers of converted Llama 2 / Mistral files instead.
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    train(tok, 1500, ["<unk>", "<s>", "</s>"], [], max_codepoint=0x24F)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    # Without <0xF0>..<0xF4>, four-byte characters (emoji) fall back to the
    # fused <unk> instead, and the ids have a gap.
    for b in range(256):
        if not 0xF0 <= b <= 0xF4:
            vocab["<0x%02X>" % b] = next_id + b
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(spec))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)])
    return json.loads(tok.to_str())


def component_json(kind, component):
    """The tokenizer.json form of a component."""
    tok = Tokenizer(models.BPE())
    setattr(tok, kind, component)
    return json.loads(tok.to_str())[kind]


def component_cases():
    P, N, D = pre_tokenizers, normalizers, decoders
    cases = []

    def pre(component, texts):
        for text in texts:
            pieces = [p for p, _ in component.pre_tokenize_str(text)]
            cases.append({"kind": "pre_tokenizer",
                          "config": component_json("pre_tokenizer", component),
                          "input": text, "output": pieces})

    behaviors = ["removed", "isolated", "merged_with_previous",
                 "merged_with_next", "contiguous"]
    for behavior in behaviors:
        for invert in [False, True]:
            pre(P.Split("-", behavior, invert=invert),
                ["the-final--countdown", "-a-", "--", "abc", "a-b-c-"])
            pre(P.Split(Regex(r"\s+"), behavior, invert=invert),
                ["  hello  world 12 ab34 ", "x"])
            pre(P.Split(Regex(r"\d"), behavior, invert=invert),
                ["a1b22c333", "4x5"])
            # Empty matches.
            pre(P.Split(Regex(r"(?=[A-Z])"), behavior, invert=invert),
                ["HelloWorldFooBAR", "lower"])
            pre(P.Split(Regex(r"x*"), behavior, invert=invert), ["axxbx", "xx"])
    for individual in [False, True]:
        pre(P.Digits(individual_digits=individual),
            ["ab12x٣٤５6 1234567", "Ⅻ½²①"])
    for prefix in [False, True]:
        for use_regex in [False, True]:
            pre(P.ByteLevel(add_prefix_space=prefix, use_regex=use_regex),
                ["Hello world", " leading", "it's 123  ok\n\n", "é😀 x"])
    pre(P.Sequence([P.Digits(individual_digits=True),
                    P.ByteLevel(add_prefix_space=False)]),
        ["abc 2024", "x  9"])
    pre(P.Split(Regex(LLAMA3_REGEX), "isolated"),
        ["I'M here, it's 12345!\n\n  ok  ", "\u1c89's \U000105c0'S x"])

    def norm(component, texts):
        for text in texts:
            cases.append({"kind": "normalizer",
                          "config": component_json("normalizer", component),
                          "input": text, "output": component.normalize_str(text)})

    norm(N.Prepend("▁"), ["", "a b"])
    norm(N.Replace(" ", "▁"), ["a  b ", "none"])
    norm(N.Replace(Regex(r"\s+"), " "), ["a  \n b\t", "x"])
    norm(N.Sequence([N.Prepend("▁"), N.Replace(" ", "▁")]), ["hi there"])
    # Unicode normalization forms: composition and decomposition, canonical
    # reordering, singletons, Hangul, compatibility mappings, and characters
    # newer than tokenizers' Unicode 9.0 tables (U+1E944 is 9.0 and reorders;
    # U+1DF6 (10.0) and U+10F82 (14.0) do not; U+11935 U+11930 (13.0) do not
    # compose; U+10781 (14.0) has no compatibility mapping there).
    unicode_inputs = [
        "cafe\u0301 caf\u00e9 \u212b \u0041\u030a \u1e9b\u0323",
        "a\u0301\u0323 q\u0307\u0323 \u1100\u1161\u11a8 \ud55c\uad6d\uc5b4",
        "\ufb01 \u2460 \u00bd \uff21\uff22 x\u00b2 \u2126 \u0958",
        "a\u0301\U0001e944\u0323 a\u0301\u1df6\u0323 a\u0301\U00010f82\u0323",
        "\U00011935\U00011930 \U00010781 \u1c89 plain ascii",
    ]
    for form in [N.NFC(), N.NFD(), N.NFKC(), N.NFKD()]:
        norm(form, unicode_inputs)
    norm(N.Sequence([N.NFKC(), N.Replace(" ", "\u2581")]), ["\ufb01 x"])

    def dec(component, token_lists):
        for tokens in token_lists:
            cases.append({"kind": "decoder",
                          "config": component_json("decoder", component),
                          "input": tokens, "output": component.decode(tokens)})

    dec(D.ByteLevel(), [["Hello", "Ġworld", "Ã", "©"], ["hé", " x", "ĠðŁĺĢ"],
                        ["ðŁĺ"], []])
    dec(D.ByteFallback(), [["<0xE5>", "<0x8f>", "<0xab>", "a"],
                           ["<0xE5>", "<0x8f>", "a", "<0x61>"], ["<0xZZ>", "b"]])
    dec(D.Fuse(), [["a", "b", "c"]])
    dec(D.Strip(content=" ", left=1, right=0), [["  a ", " b", ""]])
    dec(D.Strip(content="a", left=2, right=2), [["aaxaaa", "xa", "b"]])
    dec(D.Replace("▁", " "), [["▁Hello", "▁▁world"]])
    dec(D.Sequence([D.Replace("▁", " "), D.ByteFallback(), D.Fuse(),
                    D.Strip(content=" ", left=1, right=0)]),
        [["▁Hi", "<0xE6>", "<0x97>", "<0xA5>", "▁there"]])
    return cases


def write_fixture(name, spec, corpus):
    out_dir = os.path.join(HERE, "fixtures", name)
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(spec, ensure_ascii=False, indent=1)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    tok = Tokenizer.from_str(text)
    with open(os.path.join(out_dir, "expected.jsonl"), "w", encoding="utf-8") as f:
        for line in corpus:
            ids = tok.encode(line, add_special_tokens=False).ids
            ids_special = tok.encode(line, add_special_tokens=True).ids
            record = {
                "ids": ids,
                "ids_special": ids_special,
                "decoded": tok.decode(ids_special, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids_special, skip_special_tokens=True),
            }
            f.write(json.dumps(record, ensure_ascii=False,
                               separators=(",", ":")) + "\n")


def main():
    assert tokenizers.__version__ == "0.22.2", tokenizers.__version__
    corpus = corpus_lines()
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for line in corpus:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    for name, build in [("gpt2_style", gpt2_style), ("llama3_style", llama3_style),
                        ("qwen2_style", qwen2_style), ("llama2_style", llama2_style)]:
        write_fixture(name, build(), corpus)
        print("wrote", name)
    with open(os.path.join(HERE, "fixtures", "component_cases.jsonl"), "w",
              encoding="utf-8") as f:
        for case in component_cases():
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    print("wrote component_cases")


if __name__ == "__main__":
    main()
