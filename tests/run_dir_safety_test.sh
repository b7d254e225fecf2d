#!/usr/bin/env bash
# File-system faults and planted links in the run directory, through the
# prefopt command:
#  - a full disk while a checkpoint is saved (RLIMIT_FSIZE through ulimit -f,
#    with SIGXFSZ ignored: EFBIG, as ENOSPC, without a mount) ends the run with
#    an error naming the file and the OS error; no step folder appears, the
#    earlier checkpoint stays the one --resume=latest picks, metrics.jsonl holds only complete lines,
#    and the resumed run ends as an uninterrupted one;
#  - a symlink planted as metrics.jsonl is refused and its target kept; links
#    planted as config.textproto and report.html are replaced, their targets
#    kept;
#  - run directories that are not ours to write (world-writable, another
#    user's, under a file) are refused with a message that names them.
set -uo pipefail

prefopt="$PWD/$1"
pairs="$PWD/tests/fixtures/gpt2/pairs.jsonl"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
export OMP_NUM_THREADS=1
failures=0

source "$(dirname "$0")/cli_lib.sh"

cat >"$tmp/small.textproto" <<CONF
model { architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 n_layer: 2 n_head: 4 }
data { train_files: "$pairs" max_length: 32 shuffle: true }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 }
batch { micro_batch_size: 1 global_batch_size: 2 }
max_steps: 4
save_every_steps: 2
seed: 5
CONF

# train LOG ARGS...: runs prefopt train, output to LOG; returns its status.
train() {
  local log=$1
  shift
  "$prefopt" train --config="$tmp/small.textproto" "$@" >"$log" 2>&1
}

# expect_in NAME FILE TEXT: FILE contains TEXT.
expect_in() {
  if grep -qF -- "$3" "$2"; then
    ok "$1"
  else
    fail "$1: \"$3\" not in $2:"
    cat "$2"
  fi
}

losses() { sed -E 's/, "tokens_per_second": [^,}]*//' "$1/metrics.jsonl"; }

# --- A full disk while the step-4 checkpoint is saved. ---
train "$tmp/straight.log" --run_dir="$tmp/straight" ||
  { fail "uninterrupted run"; cat "$tmp/straight.log"; }
cp -r "$tmp/straight" "$tmp/full"
rm -r "$tmp/full/checkpoints/step_4"
# 16 KiB per file: enough for the metrics, events and config, too little for
# the checkpoint's model.safetensors.
(
  ulimit -f 16
  trap '' XFSZ
  exec "$prefopt" train --config="$tmp/small.textproto" --run_dir="$tmp/full" \
    --resume=latest
) >"$tmp/full.log" 2>&1
status=$?
if [[ $status -eq 1 ]]; then
  ok "full disk: the run ends with status 1"
else
  fail "full disk: status $status, expected 1"
  cat "$tmp/full.log"
fi
expect_in "full disk: the error names the file and the OS error" "$tmp/full.log" \
  ".safetensors (through "
expect_in "full disk: the OS error is shown" "$tmp/full.log" "File too large"
# The save's temporary folder may stay (resume reports it, the next save
# removes it); no step_4 folder may appear.
if [[ -e "$tmp/full/checkpoints/step_2/COMPLETE" && ! -e "$tmp/full/checkpoints/step_4" ]]; then
  ok "full disk: step_2 is intact and no step_4 folder was made"
else
  fail "full disk: checkpoints are: $(ls -A "$tmp/full/checkpoints" | tr '\n' ' ')"
fi
if [[ "$(tail -c 1 "$tmp/full/metrics.jsonl" | od -An -c | tr -d ' ')" == '\n' ]] &&
  ! grep -qv '^{.*}$' "$tmp/full/metrics.jsonl"; then
  ok "full disk: metrics.jsonl holds complete lines only"
else
  fail "full disk: metrics.jsonl has a partial line:"
  cat "$tmp/full/metrics.jsonl"
fi
if train "$tmp/full_resumed.log" --run_dir="$tmp/full" --resume=latest; then
  expect_in "full disk: resume skips the unfinished save" "$tmp/full_resumed.log" \
    "checkpoint $tmp/full/checkpoints/step_4: the save did not finish"
  expect_in "full disk: resume picks the earlier checkpoint" "$tmp/full_resumed.log" \
    "resumed from $tmp/full/checkpoints/step_2: step 2 of 4"
  if diff <(losses "$tmp/straight") <(losses "$tmp/full") >/dev/null; then
    ok "full disk: the resumed run logs the uninterrupted run's metrics"
  else
    fail "full disk: the resumed run's metrics differ"
  fi
else
  fail "full disk: resume"
  cat "$tmp/full_resumed.log"
fi

# --- Symlinks planted in the run directory. ---
printf 'victim\n' >"$tmp/victim"
mkdir "$tmp/linked"
ln -s "$tmp/victim" "$tmp/linked/metrics.jsonl"
if train "$tmp/linked.log" --run_dir="$tmp/linked"; then
  fail "a metrics.jsonl symlink: the run succeeded"
else
  expect_in "a metrics.jsonl symlink is refused" "$tmp/linked.log" \
    "cannot open $tmp/linked/metrics.jsonl for writing: it is a symbolic link"
fi
rm "$tmp/linked/metrics.jsonl"
for name in config.textproto report.html; do
  ln -sf "$tmp/victim" "$tmp/linked/$name"
done
train "$tmp/linked2.log" --run_dir="$tmp/linked" --set=save_every_steps=0 ||
  { fail "run with planted config.textproto and report.html links"; cat "$tmp/linked2.log"; }
for name in config.textproto report.html; do
  if [[ -f "$tmp/linked/$name" && ! -L "$tmp/linked/$name" ]]; then
    ok "a $name symlink is replaced by the file"
  else
    fail "$name is not a regular file"
  fi
done
if [[ "$(cat "$tmp/victim")" == victim ]]; then
  ok "the symlinks' target is untouched"
else
  fail "the symlinks' target was written"
fi

# --- Run directories that are not ours to write. ---
mkdir -m 0777 "$tmp/world"
chmod 0777 "$tmp/world"
if train "$tmp/world.log" --run_dir="$tmp/world"; then
  fail "a world-writable run dir was used"
else
  expect_in "a world-writable run dir is refused" "$tmp/world.log" \
    "run_dir: $tmp/world is writable by every user (mode 0777)"
fi
mkdir "$tmp/others"
if chown 65534:65534 "$tmp/others" 2>/dev/null; then
  if train "$tmp/others.log" --run_dir="$tmp/others"; then
    fail "another user's run dir was used"
  else
    expect_in "another user's run dir is refused" "$tmp/others.log" \
      "run_dir: $tmp/others is owned by uid 65534"
  fi
  [[ -z "$(ls -A "$tmp/others")" ]] || fail "files were written into another user's run dir"
else
  echo "skip another user's run dir: chown needs root"
fi
printf 'x' >"$tmp/a_file"
if train "$tmp/under_file.log" --run_dir="$tmp/a_file/run"; then
  fail "a run dir under a file was used"
else
  expect_in "a run dir under a file is refused" "$tmp/under_file.log" \
    "$tmp/a_file/run: cannot create the run directory: Not a directory"
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
