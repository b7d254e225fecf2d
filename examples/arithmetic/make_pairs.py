#!/usr/bin/env python3
"""Generates the bundled arithmetic data (Python standard library only).

Each pair asks for a two-digit sum: the prompt is "37+48=", the chosen response is
the correct answer, the rejected response a plausible wrong one (off by one, off by
ten, or with two digits swapped), each ending with an end-of-sequence token. The
preference is verifiable, so accuracy on held-out pairs measures learning.

Held-out means unseen: of the 90 x 90 sums, 400 are set aside; eval.jsonl asks
200 of them, demos_eval.jsonl and prior_eval.jsonl the other 200, and no
training file asks any of the 400.

Demonstrations (demos_*.jsonl) hold the prompt and the correct answer (SFT).
Unpaired examples (unpaired_*.jsonl, KTO) hold one answer per sum, the correct
one labelled true or a wrong one (as a pair's rejected answer) labelled false,
half each: thumbs-up/thumbs-down feedback without pairs.
The PRIOR demonstrations (prior_*.jsonl) also carry a context, a "hint" that
states the answer's last digit (tokens that the hint makes predictable get more
weight than those it does not).

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


def pair(rng, a, b):
    return {
        "prompt_ids": ids(f"{a}+{b}="),
        "chosen_ids": ids(str(a + b)) + [END],
        "rejected_ids": ids(str(wrong_answer(rng, a, b))) + [END],
    }


def demo(rng, a, b):
    return {
        "prompt_ids": ids(f"{a}+{b}="),
        "completion_ids": ids(str(a + b)) + [END],
    }


def unpaired(rng, a, b):
    example = pair(rng, a, b)
    desirable = rng.random() < 0.5
    return {
        "prompt_ids": example["prompt_ids"],
        "completion_ids": example["chosen_ids" if desirable else "rejected_ids"],
        "label": desirable,
    }


def hinted_demo(rng, a, b):
    example = demo(rng, a, b)
    answer_last_digit = example["completion_ids"][-2]
    return {"context_ids": [answer_last_digit, EQUALS], **example}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(1234)
    sums = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(sums)
    eval_pairs, eval_demos, train = sums[:200], sums[200:400], sums[400:]
    # Training files draw their sums from `train` (with repeats); each
    # evaluation file asks its own held-out sums once.
    for name, make, problems in (
            ("train.jsonl", pair, [rng.choice(train) for _ in range(8000)]),
            ("eval.jsonl", pair, eval_pairs),
            ("demos_train.jsonl", demo, [rng.choice(train) for _ in range(2000)]),
            ("demos_eval.jsonl", demo, eval_demos),
            ("prior_train.jsonl", hinted_demo,
             [rng.choice(train) for _ in range(2000)]),
            ("prior_eval.jsonl", hinted_demo, eval_demos),
            # Last, so that the files above keep their contents.
            ("unpaired_train.jsonl", unpaired,
             [rng.choice(train) for _ in range(4000)]),
            ("unpaired_eval.jsonl", unpaired, eval_pairs)):
        with open(os.path.join(here, name), "w") as f:
            for a, b in problems:
                f.write(json.dumps(make(rng, a, b), separators=(",", ":")) +
                        "\n")


if __name__ == "__main__":
    main()
