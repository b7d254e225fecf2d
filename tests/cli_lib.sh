# Shared by the shell tests of the prefopt command (sourced after they set
# `prefopt`, `tmp` and `failures`).

# fail MESSAGE / ok MESSAGE: one result line; fail counts it.
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
ok() { echo "ok   $*"; }

# expect_fail NAME EXPECTED_EXIT EXPECTED_SUBSTRING -- ARGS...: runs prefopt
# with ARGS; passes when it exits with EXPECTED_EXIT and its output holds
# EXPECTED_SUBSTRING. A run that would block forever is cut off after 20 s
# (killed 5 s later, should it ignore SIGTERM) and fails the check.
expect_fail() {
  local name=$1 code=$2 needle=$3
  shift 4
  local out rc
  out=$(timeout -k 5 20 "$prefopt" "$@" 2>&1)
  rc=$?
  if [[ $rc -ne $code ]]; then
    echo "FAIL $name: exit $rc, expected $code; output: $out"
    failures=$((failures + 1))
  elif [[ "$out" != *"$needle"* ]]; then
    echo "FAIL $name: output lacks \"$needle\": $out"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

# write_config FILE MODEL_LINE DATA_FILE: a 3-step DPO config.
write_config() {
  cat >"$1" <<CONF
model { $2 }
data { train_files: "$3" max_length: 32 }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 }
batch { micro_batch_size: 2 global_batch_size: 4 }
max_steps: 3
run_dir: "$tmp/run_$(basename "$1" .textproto)"
CONF
}

scratch='architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 16 n_layer: 1 n_head: 2'
