#!/usr/bin/env python3
"""Generates the Unicode-property and Metaspace fixtures under tests/tokenizer/.

The Hugging Face `tokenizers` library matches Split regexes with Oniguruma,
whose Unicode tables (16.0 in tokenizers 0.23) are newer than those of
Debian 12's PCRE2 10.42 (Unicode 14), which the C++ regex layer uses. This
script records what `tokenizers` says, code point by code point, so that the
C++ tests can check the rewriting that closes the gap, and it writes that
rewriting's tables. It also records the Metaspace pre-tokenizer and decoder
(every prepend_scheme, split true and false).

Command (from the repository root; this is how the committed files were made):

    python3 -m venv /opt/tok-venv
    /opt/tok-venv/bin/pip install tokenizers==0.23.3
    apt-get install libpcre2-32-0     # Debian 12: 10.42-1+deb12u2
    /opt/tok-venv/bin/python tests/tokenizer/generate_unicode_metaspace_fixtures.py

Versions used for the committed files: Python 3.11.7, tokenizers 0.23.3 (the
script refuses other versions), PCRE2 10.42 (Debian 12's libpcre2-32-0,
loaded with ctypes: the same library version as the 8-bit one the C++ code
links, so its Unicode tables are the ones the C++ regexes see). The output is
deterministic.

Outputs:
    fixtures/unicode_classes.json
        {"tokenizers", "unicode_assigned", "classes": [{"pattern", "ranges"}]}:
        for each pattern (a property class alone, negated, or inside a
        bracket class as real Split regexes write them), the code points
        (surrogates excluded) that tokenizers' Split(pattern, "removed")
        removes from the text of all 1,112,064 scalar values, as a flat list
        [first0, last0, first1, last1, ...] of inclusive ranges. "Digits"
        stands for the Digits pre-tokenizer (Rust's char::is_numeric).
    fixtures/deepseek_style/tokenizer.json
        a small byte-level BPE with DeepSeek V3's pre-tokenizer (Split regexes
        with \\p{N}, \\p{L}, \\p{M}, \\p{P}, \\p{S}, \\s, then ByteLevel).
    fixtures/deepseek_style/unicode_probes.json
        {"template", "runs"}: for every scalar value c, the lengths in
        characters of the pieces that tokenizers' pre-tokenizer cuts
        template.replace("@", c) into. Consecutive code points with the same
        lengths form one run [first, last, "len,len,..."].
    fixtures/deepseek_style/expected.jsonl, fixtures/metaspace_*/expected.jsonl
        as expected.jsonl of generate_tokenizer_fixtures.py, for the lines of
        corpus.jsonl followed by those of corpus_extra.jsonl.
    corpus_extra.jsonl
        lines with characters assigned in Unicode 15 and 16 (emoji, marks,
        punctuation, symbols, letters, digits) and Metaspace edge cases.
    fixtures/metaspace_<scheme>_<split|nosplit>/tokenizer.json
        SentencePiece-style BPE (byte fallback) with a Metaspace pre-tokenizer
        and a Sequence[ByteFallback, Metaspace] decoder with those settings.
    fixtures/metaspace_cases.jsonl
        Metaspace pre-tokenizers and decoders (also as read from older files
        with add_prefix_space) on short inputs, in the form of
        component_cases.jsonl.
    ../../trainer/tokenizer/unicode_properties.inc
        for every property the C++ regex layer supports, and for Rust's
        char::is_numeric: the PCRE2 class items that stand for it and the code
        points tokenizers adds to (or removes from) them.
"""

import array
import ctypes
import json
import os
import random
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generate_tokenizer_fixtures as base  # noqa: E402

TOKENIZERS_VERSION = "0.23.3"
REPO = os.path.dirname(os.path.dirname(HERE))

SCALARS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
ALL_TEXT = "".join(map(chr, SCALARS))

# The properties the C++ regex layer translates: (key, Oniguruma pattern,
# the PCRE2 class items that come closest). Keys are case-folded \p{} names,
# POSIX bracket names ("[:alpha:]") and escapes ("\w").
GENERAL_CATEGORIES = [
    "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl",
    "No", "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk",
    "So", "Z", "Zs", "Zl", "Zp", "Cc", "Cf", "Co"]
LONG_NAMES = {"Letter": "L", "Mark": "M", "Number": "N", "Punctuation": "P",
              "Symbol": "S", "Separator": "Z"}
SCRIPTS = ["Han", "Hiragana", "Katakana", "Hangul", "Latin", "Cyrillic",
           "Greek", "Arabic", "Hebrew", "Thai", "Devanagari", "Common"]
# Binary properties: the added-token check for single_word (the word
# characters of Rust's regex crate) uses these.
BINARY = ["Alphabetic", "Join_Control"]
# Oniguruma's word characters leave out the joiners U+200C and U+200D.
WORD = r"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}"
POSIX = {
    "alpha": r"\p{Alphabetic}", "digit": r"\p{Nd}",
    "alnum": r"\p{Alphabetic}\p{Nd}", "upper": r"\p{Uppercase}",
    "lower": r"\p{Lowercase}", "space": r"\p{White_Space}",
    "punct": r"\p{P}\p{S}", "xdigit": "0-9A-Fa-f", "word": WORD,
    "cntrl": r"\p{Cc}", "blank": r"\p{Zs}\t"}
ESCAPES = {"w": WORD, "d": r"\p{Nd}", "s": r"\p{White_Space}",
           "h": "0-9A-Fa-f"}


def properties():
    """(key, Oniguruma pattern, PCRE2 class items) for every supported
    property."""
    out = [(gc.lower(), r"\p{%s}" % gc, r"\p{%s}" % gc)
           for gc in GENERAL_CATEGORIES]
    out += [(name.lower(), r"\p{%s}" % name, r"\p{%s}" % gc)
            for name, gc in LONG_NAMES.items()]
    out += [(s.lower(), r"\p{%s}" % s, r"\p{sc:%s}" % s) for s in SCRIPTS]
    out += [(b.lower().replace("_", ""), r"\p{%s}" % b, r"\p{%s}" % b)
            for b in BINARY]
    out += [("[:%s:]" % name, "[[:%s:]]" % name, items)
            for name, items in POSIX.items()]
    out += [("\\" + e, "\\" + e, items) for e, items in ESCAPES.items()]
    return out


def negated(key):
    """The Oniguruma pattern for the complement of property `key`, or None
    for a POSIX bracket complement, which only exists inside a bracket class,
    where the C++ layer refuses it unless PCRE2 agrees."""
    if key.startswith("[:"):
        return "[[:^%s]" % key[2:] if key in ("[:space:]", "[:cntrl:]") \
            else None
    if key.startswith("\\"):
        return key.upper()
    return r"\P{%s}" % key


def onig_members(pattern):
    """The scalar values tokenizers' Split regex `pattern` matches (as the
    removed parts of the text of all scalar values)."""
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    kept = bytearray(len(ALL_TEXT))
    for _, (begin, end) in split.pre_tokenize_str(ALL_TEXT):
        kept[begin:end] = b"\x01" * (end - begin)
    return [SCALARS[i] for i in range(len(ALL_TEXT)) if not kept[i]]


def numeric_members():
    """The scalar values the Digits pre-tokenizer groups as digits."""
    pieces = pre_tokenizers.Digits(individual_digits=False).pre_tokenize_str(
        ALL_TEXT)
    # Pieces alternate between non-digits and digits, starting with U+0000.
    out = []
    for index, (_, (begin, end)) in enumerate(pieces):
        if index % 2 == 1:
            out += SCALARS[begin:end]
    return out


class Pcre2:
    """Classifies code points with PCRE2's 32-bit library (ctypes)."""
    UTF, UCP, NO_UTF_CHECK = 0x00080000, 0x00020000, 0x40000000

    def __init__(self):
        lib = ctypes.CDLL("libpcre2-32.so.0")
        lib.pcre2_compile_32.restype = ctypes.c_void_p
        lib.pcre2_compile_32.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_void_p]
        lib.pcre2_match_data_create_32.restype = ctypes.c_void_p
        lib.pcre2_match_data_create_32.argtypes = [ctypes.c_uint32,
                                                   ctypes.c_void_p]
        lib.pcre2_match_32.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
            ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
        lib.pcre2_get_ovector_pointer_32.restype = ctypes.POINTER(
            ctypes.c_size_t)
        lib.pcre2_get_ovector_pointer_32.argtypes = [ctypes.c_void_p]
        lib.pcre2_jit_compile_32.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.lib = lib
        self.subject = array.array("I", SCALARS)

    def members(self, class_items):
        lib = self.lib
        pattern = array.array("I", map(ord, "[" + class_items + "]"))
        error, offset = ctypes.c_int(), ctypes.c_size_t()
        code = lib.pcre2_compile_32(pattern.buffer_info()[0], len(pattern),
                                    self.UTF | self.UCP, ctypes.byref(error),
                                    ctypes.byref(offset), None)
        assert code, (class_items, error.value, offset.value)
        lib.pcre2_jit_compile_32(code, 1)
        data = lib.pcre2_match_data_create_32(1, None)
        address, length = self.subject.buffer_info()
        out, start = [], 0
        # The subject is valid; checking it again on every call would take
        # most of the time.
        while lib.pcre2_match_32(code, address, length, start,
                                 self.NO_UTF_CHECK, data, None) > 0:
            start = lib.pcre2_get_ovector_pointer_32(data)[1]
            out.append(SCALARS[start - 1])
        return out


def ranges(code_points):
    """Sorted code points as inclusive ranges [[first, last], ...]."""
    out = []
    for c in sorted(code_points):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def pcre2_ranges(code_points):
    """PCRE2 class items for the code points, as C++ string literals of at
    most 80 columns, one a line."""
    items = ["\\\\x{%X}" % a if a == b else "\\\\x{%X}-\\\\x{%X}" % (a, b)
             for a, b in ranges(code_points)]
    lines = [""]
    for item in items:
        if len(lines[-1]) + len(item) > 72:
            lines.append("")
        lines[-1] += item
    return "\n".join('     "%s"' % line for line in lines)


def write_property_table():
    pcre2 = Pcre2()
    entries = []
    # The Digits pre-tokenizer's Rust char::is_numeric, whose Unicode (17 in
    # tokenizers 0.23.3) is newer than Oniguruma's; the key has a space, so no
    # \p{} name reaches it.
    rows = properties() + [("rust numeric", None, r"\p{N}")]
    for key, pattern, items in rows:
        onig = set(onig_members(pattern) if pattern else numeric_members())
        native = set(pcre2.members(items))
        print("  %-12s +%d -%d" % (key, len(onig - native), len(native - onig)))
        entries.append('    {"%s", "%s",\n%s,\n%s},' % (
            key.replace("\\", "\\\\"), items.replace("\\", "\\\\"),
            pcre2_ranges(onig - native), pcre2_ranges(native - onig)))
    path = os.path.join(REPO, "trainer", "tokenizer", "unicode_properties.inc")
    with open(path, "w", encoding="utf-8") as f:
        f.write("// Generated by tests/tokenizer/"
                "generate_unicode_metaspace_fixtures.py\n"
                "// (tokenizers %s, PCRE2 10.42); do not edit.\n"
                "// {case-folded Oniguruma name, PCRE2 class items, code points"
                "\n// Oniguruma adds to them, code points it leaves out of them}"
                "\n// clang-format off\n" % TOKENIZERS_VERSION)
        f.write("\n".join(entries) + "\n// clang-format on\n")


def class_patterns():
    """The patterns whose code points unicode_classes.json records."""
    out = []
    for key, pattern, _ in properties():
        out += [p for p in (pattern, negated(key)) if p is not None]
    # \pL without braces is the literal "pL" in tokenizers' Oniguruma.
    out += [r"\pL", r"\PN", r"\p{^S}", r"\p{lu}",
            "[[:digit:][:space:]]", r"[^\s\p{L}\p{N}]",
            r"[^\r\n\p{L}\p{P}\p{S}]", r"[\p{L}\p{M}]", r"[\p{P}\p{S}]",
            r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]",
            r"[^\S\r\n]", r"[\w-]", r"[^\w\s]", r"[\p{Han}\p{Hiragana}]"]
    return out


def write_unicode_classes():
    classes = []
    for pattern in class_patterns():
        flat = [c for r in ranges(onig_members(pattern)) for c in r]
        classes.append({"pattern": pattern, "ranges": flat})
    classes.append({"pattern": "Digits",
                    "ranges": [c for r in ranges(numeric_members()) for c in r]})
    assigned = len(SCALARS) - len(onig_members(r"\p{Cn}"))
    with open(os.path.join(HERE, "fixtures", "unicode_classes.json"), "w",
              encoding="utf-8") as f:
        json.dump({"tokenizers": TOKENIZERS_VERSION,
                   "unicode_assigned": assigned, "classes": classes}, f,
                  separators=(",", ":"))
        f.write("\n")
    print("wrote unicode_classes.json: %d patterns, %d assigned code points"
          % (len(classes), assigned))


# DeepSeek V3's pre-tokenizer, as its tokenizer.json has it.
DEEPSEEK_SPLITS = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?"
    r"[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
# Each code point c goes after and before letters, digits, punctuation,
# spaces and newlines, and next to itself, so its classes decide the cuts.
PROBE_TEMPLATE = "x@y@@1 @!@\n@ 7@-a@"


def deepseek_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False)
         for p in DEEPSEEK_SPLITS] +
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    base.train(tok, 1500, [], pre_tokenizers.ByteLevel.alphabet())
    tok.add_special_tokens(["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
    return json.loads(tok.to_str())


def write_unicode_probes(spec):
    pre = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer
    runs = []
    for c in SCALARS:
        text = PROBE_TEMPLATE.replace("@", chr(c))
        pieces = pre.pre_tokenize_str(text)
        assert pieces[0][1][0] == 0 and pieces[-1][1][1] == len(text)
        lengths = ",".join(str(end - begin) for _, (begin, end) in pieces)
        if runs and runs[-1][2] == lengths and runs[-1][1] == c - 1:
            runs[-1][1] = c
        elif runs and runs[-1][2] == lengths and runs[-1][1] == 0xD7FF and \
                c == 0xE000:
            runs[-1][1] = c
        else:
            runs.append([c, c, lengths])
    path = os.path.join(HERE, "fixtures", "deepseek_style",
                        "unicode_probes.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"template": PROBE_TEMPLATE, "runs": runs}, f,
                  ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote unicode_probes.json: %d runs" % len(runs))


def newer_characters():
    """Characters tokenizers knows and PCRE2 10.42 does not (assigned after
    Unicode 14), in code point order."""
    pcre2 = Pcre2()
    unassigned_14 = set(pcre2.members(r"\p{Cn}"))
    return [c for c in onig_members(r"\P{Cn}") if c in unassigned_14]


def extra_corpus():
    rng = random.Random(16)
    newer = newer_characters()
    print("characters assigned after Unicode 14: %d" % len(newer))
    lines = [
        "Shaking face 🫨, pink heart 🩷, goose 🪿 and jellyfish 🪼!",
        "🫨🫨 a🩷b 🪿. \u1c89\u1c8a's \ua7cb\ua7cc",
        "Marks: a\u0897b \u0cf3 \u0ece x\U00011f3e\U00011f3f",
        "Punctuation: \u1b4e\u1b4f\u1b7f \U00011f43\U00011f44 (\U0001e5ff)",
        "Symbols: \u2427\u2428 \u2ffc\u31ef \U0001cc00\U0001cc01 \U0001fa75",
        "Digits: \U00010d40\U00010d41\U00010d42 \U0001e5f1\U0001e5f2 x\U000116d0",
        "Kawi \U00011f04\U00011f05\U00011f34\U00011f35 and CJK \U0002ebf0\U00031350",
        # Metaspace edge cases.
        "▁already▁metaspaced text",
        " leading space",
        "  two leading spaces",
        "trailing spaces  ",
        "<s>Hello</s> <s> spaced",
        "a\u3000b\u00a0c\td",
    ]
    for _ in range(60):
        chars = [chr(rng.choice(newer)) for _ in range(rng.randint(3, 12))]
        glue = ["", " ", "a", "1", "!", "\n", "，"]
        lines.append("".join(c + rng.choice(glue) for c in chars))
    return lines


def metaspace_style(scheme, split):
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    base.train(tok, 900, ["<unk>", "<s>", "</s>"], [], max_codepoint=0x24F)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for b in range(256):
        vocab["<0x%02X>" % b] = next_id + b
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                             "prepend_scheme": scheme, "split": split}
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme,
         "split": split}]}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab["<s>"]],
                                   "tokens": ["<s>"]}}}
    return json.loads(Tokenizer.from_str(json.dumps(spec)).to_str())


def metaspace_cases():
    cases = []
    texts = ["Hello world", " leading", "two  spaces ", "▁pre▁spaced", "",
             "x", "  ", "end▁"]
    configs = []
    for scheme in ["always", "never", "first"]:
        for split in [True, False]:
            configs.append({"type": "Metaspace", "replacement": "▁",
                            "prepend_scheme": scheme, "split": split})
    # Files written before prepend_scheme existed (add_prefix_space false
    # must come with prepend_scheme "never": tokenizers refuses the file
    # otherwise), and another replacement.
    configs += [
        {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True},
        {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True,
         "prepend_scheme": "first", "split": False},
        {"type": "Metaspace", "replacement": "▁", "add_prefix_space": False,
         "prepend_scheme": "never"},
        {"type": "Metaspace", "replacement": "_", "prepend_scheme": "always",
         "split": True},
    ]
    for config in configs:
        spec = {"version": "1.0", "model": {"type": "BPE", "vocab": {},
                                            "merges": []},
                "pre_tokenizer": config, "decoder": config}
        tok = Tokenizer.from_str(json.dumps(spec))
        for text in texts:
            cases.append({"kind": "pre_tokenizer", "config": config,
                          "input": text,
                          "output": [p for p, _ in
                                     tok.pre_tokenizer.pre_tokenize_str(text)]})
        for tokens in [["▁Hey", "▁friend", "!"], ["▁a▁b", "▁c"],
                       ["x▁", "▁", "_y_"], ["▁"], []]:
            cases.append({"kind": "decoder", "config": config,
                          "input": tokens, "output": tok.decoder.decode(tokens)})
    # "first" prepends only to the piece at the start of the text.
    sequence = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "|"}, "behavior": "Isolated",
         "invert": False},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
         "split": False}]}
    tok = Tokenizer.from_str(json.dumps(
        {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []},
         "pre_tokenizer": sequence}))
    for text in ["a b|c d", "|x", "y|"]:
        cases.append({"kind": "pre_tokenizer", "config": sequence,
                      "input": text,
                      "output": [p for p, _ in
                                 tok.pre_tokenizer.pre_tokenize_str(text)]})
    with open(os.path.join(HERE, "fixtures", "metaspace_cases.jsonl"), "w",
              encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    print("wrote metaspace_cases.jsonl: %d cases" % len(cases))


def main():
    assert tokenizers.__version__ == TOKENIZERS_VERSION, tokenizers.__version__
    print("property table:")
    write_property_table()
    write_unicode_classes()
    with open(os.path.join(HERE, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    extra = extra_corpus()
    with open(os.path.join(HERE, "corpus_extra.jsonl"), "w",
              encoding="utf-8") as f:
        for line in extra:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    spec = deepseek_style()
    base.write_fixture("deepseek_style", spec, corpus + extra)
    write_unicode_probes(spec)
    for scheme in ["always", "never", "first"]:
        for split in [True, False]:
            name = "metaspace_%s_%s" % (scheme, "split" if split else "nosplit")
            base.write_fixture(name, metaspace_style(scheme, split),
                               corpus + extra)
            print("wrote", name)
    metaspace_cases()


if __name__ == "__main__":
    main()
