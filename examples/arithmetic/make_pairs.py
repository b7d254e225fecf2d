#!/usr/bin/env python3
"""Generates the bundled arithmetic data (Python standard library only).

Each pair asks for a two-digit sum: the prompt is "37+48=", the chosen response is
the correct answer, the rejected response a plausible wrong one (off by one, off by
ten, or with two digits swapped), each ending with an end-of-sequence token. The
preference is verifiable, so accuracy on held-out pairs measures learning.

Demonstrations (demos_*.jsonl) hold the prompt and the correct answer; they also
carry a context, a "hint" that states the answer's last digit (for PRIOR: tokens
that the hint makes predictable get more weight than those it does not).

Tokens are characters: '0'..'9' -> 0..9, '+' -> 10, '=' -> 11, end -> 12.

    python3 examples/arithmetic/make_pairs.py   # rewrites every .jsonl here
"""
import json
import os
import random

PLUS, EQUALS, END = 10, 11, 12


def ids(text):
    table = {"+": PLUS, "=": EQUALS}
    return [table[c] if c in table else int(c) for c in text]


def wrong_answer(rng, a, b):
    right = a + b
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            cand = right + rng.choice([-1, 1])
        elif kind == 1:
            cand = right + rng.choice([-10, 10])
        else:
            s = str(right)
            if len(s) < 2 or s[0] == s[-1]:
                continue
            cand = int(s[::-1])
        if cand >= 0 and cand != right:
            return cand


def pair(rng):
    a, b = rng.randrange(10, 100), rng.randrange(10, 100)
    return {
        "prompt_ids": ids(f"{a}+{b}="),
        "chosen_ids": ids(str(a + b)) + [END],
        "rejected_ids": ids(str(wrong_answer(rng, a, b))) + [END],
    }


def demo(rng):
    a, b = rng.randrange(10, 100), rng.randrange(10, 100)
    answer = str(a + b)
    return {
        "context_ids": ids(answer[-1]) + [EQUALS],
        "prompt_ids": ids(f"{a}+{b}="),
        "completion_ids": ids(answer) + [END],
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(1234)
    for name, count, make in (("train.jsonl", 2000, pair),
                              ("eval.jsonl", 200, pair),
                              ("demos_train.jsonl", 2000, demo),
                              ("demos_eval.jsonl", 200, demo)):
        with open(os.path.join(here, name), "w") as f:
            for _ in range(count):
                f.write(json.dumps(make(rng)) + "\n")


if __name__ == "__main__":
    main()
