#!/usr/bin/env bash
# The prefopt command end to end: a successful run writes its resolved config and
# one metrics line per logged step; `prefopt eval` writes eval.json; `prefopt
# generate` reads ids or text; bad flags, configs, model folders and data each
# exit non-zero with a message naming the culprit.
set -uo pipefail

prefopt="$1"
fixtures="$PWD/tests/fixtures/gpt2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0

source "$(dirname "$0")/cli_lib.sh"

# A successful run.
write_config "$tmp/good.textproto" "$scratch" "$fixtures/pairs.jsonl"
if "$prefopt" train --config="$tmp/good.textproto" --set=log_every_steps=1 >"$tmp/good.log" 2>&1; then
  lines=$(wc -l <"$tmp/run_good/metrics.jsonl")
  if [[ $lines -eq 3 && -s "$tmp/run_good/config.textproto" ]] &&
     grep -q '"rewards/accuracies"' "$tmp/run_good/metrics.jsonl"; then
    echo "ok   successful run (3 metrics lines, resolved config written)"
  else
    echo "FAIL successful run: $lines metrics lines"; failures=$((failures + 1))
  fi
else
  echo "FAIL successful run: $(cat "$tmp/good.log")"; failures=$((failures + 1))
fi

expect_fail "no command" 2 "usage:" --
expect_fail "unknown command" 2 'unknown command "trian"' -- trian
expect_fail "unknown flag" 2 'unknown argument "--confg=x"' -- train --confg=x
expect_fail "missing --config" 2 "--config=FILE is required" -- train
expect_fail "missing config file" 2 "$tmp/none.textproto" -- train --config="$tmp/none.textproto"

printf 'model { architecture: GPT2 }\noptimzer { lr: 1 }\n' >"$tmp/typo.textproto"
expect_fail "unknown config field" 2 "typo.textproto:2:1" -- train --config="$tmp/typo.textproto"
expect_fail "bad --set" 2 'no field "betta"' -- train --config="$tmp/good.textproto" --set=objective.dpo.betta=1

mkdir -p "$tmp/empty_model"
write_config "$tmp/nomodel.textproto" "hf_path: \"$tmp/empty_model\"" "$fixtures/pairs.jsonl"
expect_fail "model folder without config.json" 1 "$tmp/empty_model/config.json" -- train --config="$tmp/nomodel.textproto"

mkdir -p "$tmp/truncated"
cp "$fixtures/policy/config.json" "$tmp/truncated/"
head -c 50000 "$fixtures/policy/model.safetensors" >"$tmp/truncated/model.safetensors"
write_config "$tmp/trunc.textproto" "hf_path: \"$tmp/truncated\"" "$fixtures/pairs.jsonl"
expect_fail "truncated safetensors" 1 "$tmp/truncated/model.safetensors" -- train --config="$tmp/trunc.textproto"

printf '{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}\n{"prompt_ids": [1], "chosen_ids": [2]\n' >"$tmp/bad.jsonl"
write_config "$tmp/baddata.textproto" "$scratch" "$tmp/bad.jsonl"
expect_fail "malformed JSONL" 1 "$tmp/bad.jsonl:2" -- train --config="$tmp/baddata.textproto"

printf '{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [500]}\n' >"$tmp/oov.jsonl"
write_config "$tmp/oov.textproto" "$scratch" "$tmp/oov.jsonl"
expect_fail "token id out of vocabulary" 1 "outside the model's vocabulary" -- train --config="$tmp/oov.textproto"

# Text data: a preference JSONL in TRL's shape and a chat one, tokenized with the
# model folder's tokenizer.json (and cached).
textm="$PWD/tests/fixtures/text_model"
for data in pref.jsonl pref_chat.jsonl; do
  cat >"$tmp/text_$data.textproto" <<CONF
model { hf_path: "$textm" }
data { train_files: "$textm/$data" max_length: 64 $([[ $data == *chat* ]] && echo "chat_template: CHATML") }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 }
batch { micro_batch_size: 1 global_batch_size: 2 }
max_steps: 2
run_dir: "$tmp/run_text_$data"
CONF
  if "$prefopt" train --config="$tmp/text_$data.textproto" >"$tmp/text.log" 2>&1 &&
     [[ $(wc -l <"$tmp/run_text_$data/metrics.jsonl") -eq 2 ]]; then
    echo "ok   DPO from text data ($data) with the model's tokenizer.json"
  else
    echo "FAIL text data $data: $(cat "$tmp/text.log")"; failures=$((failures + 1))
  fi
done
# Only a model, data and an objective: TRL's defaults (lr 1e-6, 8 pairs per
# step, 3 epochs, linear decay, clipping at 1, seed 42, shuffling) train it.
cat >"$tmp/minimal.textproto" <<CONF
model { hf_path: "$textm" }
data { train_files: "$textm/pref.jsonl" }
objective { dpo {} }
run_dir: "$tmp/run_minimal"
CONF
if "$prefopt" train --config="$tmp/minimal.textproto" >"$tmp/minimal.log" 2>&1 &&
   [[ $(wc -l <"$tmp/run_minimal/metrics.jsonl") -eq 3 ]] &&
   grep -q "lr: 1e-06" "$tmp/run_minimal/config.textproto" &&
   grep -q "global_batch_size: 8" "$tmp/run_minimal/config.textproto" &&
   grep -q "seed: 42" "$tmp/run_minimal/config.textproto"; then
  echo "ok   a config of model, data and objective trains with TRL's defaults"
else
  echo "FAIL minimal config: $(cat "$tmp/minimal.log")"; failures=$((failures + 1))
fi
cat >"$tmp/notemplate.textproto" <<CONF
model { hf_path: "$textm" }
data { train_files: "$textm/pref_chat.jsonl" max_length: 64 }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 }
batch { micro_batch_size: 1 global_batch_size: 2 }
run_dir: "$tmp/run_notemplate"
CONF
expect_fail "conversational data without a chat template" 1 "chat_template" -- \
  train --config="$tmp/notemplate.textproto"

# A diverging run (absurd learning rate) stops with the step named, or skips
# the non-finite updates when asked to.
write_config "$tmp/nan.textproto" "$scratch" "$fixtures/pairs.jsonl"
expect_fail "non-finite loss stops the run" 1 "step 2: the loss is not finite" -- \
  train --config="$tmp/nan.textproto" --set=optimizer.lr=1e30
if "$prefopt" train --config="$tmp/nan.textproto" --set=optimizer.lr=1e30 \
    --set=skip_nonfinite_steps=true >"$tmp/nan.log" 2>&1 &&
   grep -q '"skipped_nonfinite": 1' "$tmp/run_nan/metrics.jsonl"; then
  echo "ok   non-finite steps skipped with skip_nonfinite_steps"
else
  echo "FAIL non-finite skip: $(cat "$tmp/nan.log")"; failures=$((failures + 1))
fi

# expect_ok NAME EXPECTED_SUBSTRING -- ARGS...: exit 0, output has the text.
expect_ok() {
  local name=$1 needle=$2
  shift 3
  local out rc
  out=$("$prefopt" "$@" 2>&1)
  rc=$?
  if [[ $rc -ne 0 || "$out" != *"$needle"* ]]; then
    echo "FAIL $name: exit $rc, expected 0 and \"$needle\"; output: $out"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

# prefopt eval.
hf="hf_path: \"$fixtures/policy\" reference_hf_path: \"$fixtures/reference\""
write_config "$tmp/eval.textproto" "$hf" "$fixtures/pairs.jsonl"
expect_ok "eval of a model folder" "ranking/idealized_accuracy" -- eval \
  --config="$tmp/eval.textproto" --checkpoint="$fixtures/policy" \
  --set=data.eval_files="$fixtures/pairs.jsonl" --run_dir="$tmp/eval_run"
if grep -q '"ranking/alignment_gap"' "$tmp/eval_run/eval.json"; then
  echo "ok   eval.json written"
else
  echo "FAIL eval.json: $(cat "$tmp/eval_run/eval.json")"; failures=$((failures + 1))
fi
expect_fail "eval without held-out data" 1 "data.eval_files: no held-out data" -- \
  eval --config="$tmp/eval.textproto"
expect_fail "eval without --config" 2 "--config=FILE is required" -- eval
expect_fail "eval with two model flags" 2 "give the model folder once" -- \
  eval --config="$tmp/eval.textproto" --model=a --checkpoint=b

# prefopt generate: ids without a tokenizer; text with one (a copy of the
# fixture model with a character tokenizer over its 101 ids).
expect_ok "generate from ids" "," -- generate --model="$fixtures/policy" \
  --prompt_ids=5,6,7 --max_new_tokens=4
expect_fail "text prompt without tokenizer.json" 2 "has no tokenizer.json" -- \
  generate --model="$fixtures/policy" --prompt=hello
expect_fail "two prompts" 2 "give exactly one of" -- \
  generate --model="$fixtures/policy" --prompt=a --prompt_ids=1
expect_fail "bad ids" 2 '"x" is not a token id' -- \
  generate --model="$fixtures/policy" --prompt_ids=1,x
expect_fail "non-numeric flag" 2 '--temperature: not a number: "warm"' -- \
  generate --model="$fixtures/policy" --prompt_ids=1 --temperature=warm
expect_fail "bad top_p" 2 "top_p must be in (0, 1]" -- \
  generate --model="$fixtures/policy" --prompt_ids=1 --top_p=0
printf '{"prompt_ids": [1]}\n{"prompt_ids": []}\n' >"$tmp/empty_prompt.jsonl"
expect_fail "empty prompt" 2 "empty_prompt.jsonl:2: the prompt has no tokens" -- \
  generate --model="$fixtures/policy" --data="$tmp/empty_prompt.jsonl"
mkdir -p "$tmp/with_tok"
cp "$fixtures/policy/"* "$tmp/with_tok/"
python3 - "$tmp/with_tok/tokenizer.json" <<'PY'
import json, sys
vocab = {chr(0x100 + i): i for i in range(101)}
json.dump({"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
           "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": None,
                     "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False,
                     "byte_fallback": False, "ignore_merges": False,
                     "vocab": vocab, "merges": []}},
          open(sys.argv[1], "w"))
PY
text=$("$prefopt" generate --model="$tmp/with_tok" --prompt="$(printf '\xc4\x85\xc4\x86\xc4\x87')" \
  --max_new_tokens=6 2>&1)
ids=$("$prefopt" generate --model="$tmp/with_tok" --prompt_ids=5,6,7 \
  --max_new_tokens=6 2>&1)
if [[ -n "$text" && "$text" == "$ids" ]]; then
  echo "ok   generate from text equals generate from its ids ($text)"
else
  echo "FAIL generate from text: \"$text\" vs ids: \"$ids\""; failures=$((failures + 1))
fi
# A tokenizer with more tokens than the model has embeddings is refused.
mkdir -p "$tmp/big_tok"
cp "$fixtures/policy/"* "$tmp/big_tok/"
python3 - "$tmp/with_tok/tokenizer.json" "$tmp/big_tok/tokenizer.json" <<'PY'
import json, sys
tok = json.load(open(sys.argv[1]))
tok["model"]["vocab"][chr(0x300)] = 101
json.dump(tok, open(sys.argv[2], "w"))
PY
expect_fail "generate with a tokenizer larger than the model" 1 \
  "has id 101, outside the model's vocabulary [0, 101)" -- \
  generate --model="$tmp/big_tok" --prompt_ids=1
printf '{"prompt_ids": [5, 6, 7], "chosen_ids": [1]}\n{"prompt": "\u0105"}\n' >"$tmp/prompts.jsonl"
out=$("$prefopt" generate --model="$tmp/with_tok" --data="$tmp/prompts.jsonl" \
  --max_new_tokens=3 2>"$tmp/generate.err")
if [[ $(grep -c '"generated_ids"' <<<"$out") -eq 2 ]] &&
   grep -q "of 1 (" "$tmp/generate.err"; then
  echo "ok   generate --data (one JSON line per prompt, matches counted)"
else
  echo "FAIL generate --data: $out $(cat "$tmp/generate.err")"; failures=$((failures + 1))
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
