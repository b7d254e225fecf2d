#!/usr/bin/env bash
# Inputs that are no regular files, numbers at the int limit, signals while a
# run is prepared, and the last-resort handler of the prefopt command: each
# ends promptly with a message naming the culprit and an exit status the
# cause explains (never a hang, an abort, an overflow or a read until memory
# runs out).
set -uo pipefail

prefopt="$1"
fixtures="$PWD/tests/fixtures/gpt2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0

source "$(dirname "$0")/cli_lib.sh"
mkfifo "$tmp/pipe"

# The last-resort handler: no input is known to reach it, so the test hook
# throws.
PREFOPT_TEST_THROW=bad_alloc expect_fail "std::bad_alloc escaping main" 70 \
  "prefopt: internal error: out of memory (std::bad_alloc)" -- train
PREFOPT_TEST_THROW="broken invariant" expect_fail "an exception escaping main" 70 \
  "prefopt: internal error: broken invariant" -- train

# Special files as inputs.
write_config "$tmp/good.textproto" "$scratch" "$fixtures/pairs.jsonl"
expect_fail "/dev/zero as training data" 1 \
  "/dev/zero is a character device, not a regular file" -- \
  train --config="$tmp/good.textproto" --set=data.train_files=/dev/zero
expect_fail "a FIFO as training data" 1 "$tmp/pipe is a FIFO (named pipe)" -- \
  train --config="$tmp/good.textproto" --set=data.train_files="$tmp/pipe"
expect_fail "a FIFO as the config file" 2 \
  "config file $tmp/pipe is a FIFO (named pipe)" -- train --config="$tmp/pipe"
expect_fail "a directory as training data" 1 "$tmp is a directory" -- \
  train --config="$tmp/good.textproto" --set=data.train_files="$tmp"

mkdir -p "$tmp/fifo_shard"
cp "$fixtures/policy_sharded/"* "$tmp/fifo_shard/"
rm "$tmp/fifo_shard/model-00002-of-00004.safetensors"
mkfifo "$tmp/fifo_shard/model-00002-of-00004.safetensors"
write_config "$tmp/fifo_model.textproto" "hf_path: \"$tmp/fifo_shard\"" "$fixtures/pairs.jsonl"
expect_fail "a FIFO as a shard of the model's weights" 1 \
  "$tmp/fifo_shard/model-00002-of-00004.safetensors is a FIFO (named pipe)" -- \
  train --config="$tmp/fifo_model.textproto"

mkdir -p "$tmp/fifo_config"
mkfifo "$tmp/fifo_config/config.json"
expect_fail "a FIFO as the model's config.json" 1 \
  "$tmp/fifo_config/config.json is a FIFO (named pipe)" -- \
  generate --model="$tmp/fifo_config" --prompt_ids=1,2

mkdir -p "$tmp/fifo_tokenizer"
cp "$fixtures/policy/"* "$tmp/fifo_tokenizer/"
mkfifo "$tmp/fifo_tokenizer/tokenizer.json"
expect_fail "a FIFO as tokenizer.json" 1 \
  "$tmp/fifo_tokenizer/tokenizer.json is a FIFO (named pipe)" -- \
  generate --model="$tmp/fifo_tokenizer" --prompt=hello
expect_fail "a FIFO as generate --data" 2 "$tmp/pipe is a FIFO (named pipe)" -- \
  generate --model="$fixtures/policy" --data="$tmp/pipe"

# Numbers at the int limit are refused up front, or computed without
# overflowing.
expect_fail "a micro-batch of more tokens than an int counts" 2 \
  "batch.micro_batch_size: micro_batch_size * data.max_length must be at most 1073741824 tokens" -- \
  train --config="$tmp/good.textproto" --set=batch.micro_batch_size=2000000000 \
  --set=batch.global_batch_size=2000000000
expect_fail "more steps than an int counts" 1 \
  "num_epochs: 2000000000 epochs of 2 steps are more than 2147483647 steps" -- \
  train --config="$tmp/good.textproto" --set=max_steps=0 --set=num_epochs=2000000000
if out=$(timeout -k 5 60 "$prefopt" train --config="$tmp/good.textproto" \
  --set=batch.micro_batch_size=1 --set=batch.global_batch_size=2147483647 2>&1) &&
  [[ "$out" == *"done: 3 steps"* ]]; then
  echo "ok   a global batch of 2147483647 takes the whole data each step"
else
  echo "FAIL global batch of 2147483647: $out"; failures=$((failures + 1))
fi
expect_fail "generate --max_new_tokens=-5" 2 "--max_new_tokens: must be >= 1, got -5" -- \
  generate --model="$fixtures/policy" --prompt_ids=1,2 --max_new_tokens=-5
if out=$(timeout -k 5 60 "$prefopt" generate --model="$fixtures/policy" --prompt_ids=1,2 \
  --max_new_tokens=2147483647 2>&1) &&
  [[ "$out" == *"max_new_tokens lowered from 2147483647 to 62"* ]]; then
  echo "ok   generate --max_new_tokens=2147483647 is lowered to fit"
else
  echo "FAIL generate --max_new_tokens=2147483647: $out"; failures=$((failures + 1))
fi

# A huge argument is not echoed whole.
long=$(printf 'x%.0s' $(seq 100000))
out=$("$prefopt" train --"$long"=1 2>&1)
rc=$?
if [[ $rc -eq 2 && ${#out} -lt 3000 && "$out" == *"x… (100004 bytes)\" (flags: "* ]]; then
  echo "ok   a huge unknown flag is shortened in the message"
else
  echo "FAIL huge unknown flag: exit $rc, ${#out} characters: ${out:0:300}"
  failures=$((failures + 1))
fi

# A stop signal while the run is prepared (here: the reference pass over
# 100000 pairs) ends it at once, by the signal, saying so; there is no
# checkpoint to write yet.
python3 - "$tmp/many.jsonl" <<'PY'
import random, sys
r = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(100000):
        ids = [r.randrange(101) for _ in range(7)]
        f.write('{"prompt_ids": %s, "chosen_ids": %s, "rejected_ids": %s}\n'
                % (ids[:3], ids[3:5], ids[5:]))
PY
write_config "$tmp/many.textproto" "$scratch" "$tmp/many.jsonl"
"$prefopt" train --config="$tmp/many.textproto" >"$tmp/many.log" 2>&1 &
pid=$!
# The handlers are in place before the device line.
for _ in $(seq 400); do
  grep -q '^device' "$tmp/many.log" && break
  sleep 0.05
done
kill -TERM "$pid"
start=$SECONDS
wait "$pid"
rc=$?
if [[ $rc -eq 143 && $((SECONDS - start)) -lt 10 ]] &&
   grep -qF "prefopt: stopped by SIGTERM while preparing the run (nothing to save yet)" "$tmp/many.log" &&
   [[ ! -e "$tmp/run_many/checkpoints" ]]; then
  echo "ok   SIGTERM while preparing the run ends it with a message"
else
  echo "FAIL SIGTERM while preparing the run: exit $rc after $((SECONDS - start)) s: $(cat "$tmp/many.log")"
  failures=$((failures + 1))
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
