#!/usr/bin/env bash
# LoRA DPO on the CPU at a Llama-3.2-3B shape: prefopt's dpo_step_bench
# beside PyTorch + PEFT (tests/benchmarks/torch_lora_dpo_step.py) on the same
# shapes, one pair of prompt + response tokens per sequence, 2 threads. A
# benchmark, not a test: it prints peak RSS and s/step side by side (and the
# load average, since other work on the machine slows the steps; the RSS is
# not affected by it).
#
#   bazel build -c opt //trainer/loop:dpo_step_bench
#   tests/benchmarks/lora_3b.sh            # from the repository root
#
# Environment (all optional):
#   BENCH        prefopt's benchmark (default bazel-bin/trainer/loop/dpo_step_bench)
#   PYTHON       Python with torch, transformers, peft (default /opt/ref-venv/bin/python)
#   LAYERS=28    Llama-3.2-3B: d 3072, 24 heads, 8 KV heads, FF 8192, V 128256,
#                tied embeddings; fewer layers give a smaller model of the
#                same width
#   SHAPE        all the shape flags instead (a dry run of the script:
#                SHAPE="--n_embd=64 --n_layer=2 --n_head=4 --n_kv_head=2
#                --intermediate=128 --vocab=256" PROMPT=16 RESPONSE=16)
#   PROMPT=1024 RESPONSE=1024
#   LORA_R=16    LoRA rank (lora_alpha 2r) on TARGETS (default every linear
#                layer of the blocks: q,k,v,o,gate,up,down_proj)
#   BASE_DTYPE=fp32  prefopt's model.base_dtype (bf16: WEIGHT_BF16)
#   TORCH_CKPT="on off"  PyTorch runs: gradient checkpointing on, then off
#   TORCH_AS_LIMIT=22000000000  `prlimit --as` for each PyTorch run (bytes),
#                so that running out of memory is a MemoryError, not the
#                kernel's OOM killer
#   NEED_GIB=20  each run starts only once MemAvailable is at least this
#                (waits up to WAIT_S=600 s, then skips the run)
#   SKIP_PREFOPT=1 / SKIP_TORCH=1  skip a side
#
# One step each, no warm-up (a 3B step on 2 cores takes many minutes):
# prefopt with activation recomputation and the live reference (the same
# weights with the adapters off, TRL's reference for a peft model), PyTorch
# as TRL's DPOTrainer computes it (see the script's docstring).
set -u
cd "$(dirname "$0")/../.."
BENCH=${BENCH:-bazel-bin/trainer/loop/dpo_step_bench}
PYTHON=${PYTHON:-/opt/ref-venv/bin/python}
LAYERS=${LAYERS:-28}
PROMPT=${PROMPT:-1024}
RESPONSE=${RESPONSE:-1024}
LORA_R=${LORA_R:-16}
TARGETS=${TARGETS:-q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj}
BASE_DTYPE=${BASE_DTYPE:-fp32}
TORCH_CKPT=${TORCH_CKPT:-on off}
TORCH_AS_LIMIT=${TORCH_AS_LIMIT:-22000000000}
NEED_GIB=${NEED_GIB:-20}
WAIT_S=${WAIT_S:-600}
SHAPE=${SHAPE:-"--n_embd=3072 --n_layer=$LAYERS --n_head=24 --n_kv_head=8 --intermediate=8192 --vocab=128256"}

# Waits until MemAvailable >= NEED_GIB; returns 1 if it never is.
wait_for_memory() {
  local waited=0 avail
  while :; do
    avail=$(awk '/MemAvailable/ {printf "%d", $2 / 1048576}' /proc/meminfo)
    [ "$avail" -ge "$NEED_GIB" ] && return 0
    if [ "$waited" -ge "$WAIT_S" ]; then
      echo "SKIPPED: only $avail GiB available, $NEED_GIB GiB needed"
      return 1
    fi
    sleep 30
    waited=$((waited + 30))
  done
}

declare -a NAMES RSS SECS
row() {  # name, output
  NAMES+=("$1")
  RSS+=("$(echo "$2" | awk '/^peak RSS / {print $3; exit}')")
  SECS+=("$(echo "$2" | awk '/^step time / {print $3; exit}')")
}

echo "LoRA DPO step, Llama shape $SHAPE, prompt $PROMPT + response $RESPONSE, r=$LORA_R on $TARGETS"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) (start)"
if [ "${SKIP_PREFOPT:-0}" != 1 ] && wait_for_memory; then
  echo "== prefopt: $BENCH --arch=llama $SHAPE --prompt=$PROMPT --response=$RESPONSE --warmup=0 --steps=1 --activation_checkpointing=1 --live_reference=1 --lora_r=$LORA_R --lora_targets=$TARGETS --base_dtype=$BASE_DTYPE"
  out=$(OMP_NUM_THREADS=2 "$BENCH" --arch=llama $SHAPE --prompt="$PROMPT" \
    --response="$RESPONSE" --warmup=0 --steps=1 --activation_checkpointing=1 \
    --live_reference=1 --lora_r="$LORA_R" --lora_targets="$TARGETS" \
    --base_dtype="$BASE_DTYPE" 2>&1)
  echo "$out"
  row "prefopt ($BASE_DTYPE base, recompute on)" "$out"
fi
if [ "${SKIP_TORCH:-0}" != 1 ]; then
  for ckpt in $TORCH_CKPT; do
    wait_for_memory || continue
    echo "== PyTorch + PEFT, gradient checkpointing $ckpt: prlimit --as=$TORCH_AS_LIMIT $PYTHON tests/benchmarks/torch_lora_dpo_step.py $SHAPE --prompt=$PROMPT --response=$RESPONSE --lora_r=$LORA_R --lora_targets=$TARGETS --grad-ckpt=$ckpt"
    out=$(OMP_NUM_THREADS=2 prlimit --as="$TORCH_AS_LIMIT" "$PYTHON" \
      tests/benchmarks/torch_lora_dpo_step.py $SHAPE --prompt="$PROMPT" \
      --response="$RESPONSE" --lora_r="$LORA_R" --lora_targets="$TARGETS" \
      --grad-ckpt="$ckpt" 2>&1)
    echo "$out" | grep -v Warning
    if echo "$out" | grep -q '^torch_lora_dpo_step: FAILED'; then
      NAMES+=("PyTorch + PEFT (fp32, grad ckpt $ckpt)")
      RSS+=("$(echo "$out" | sed -n 's/.*"peak_rss_mib": \([0-9]*\).*/\1/p')")
      SECS+=("FAILED")
    elif echo "$out" | grep -q '^torch_lora_dpo_step: {'; then
      row "PyTorch + PEFT (fp32, grad ckpt $ckpt)" "$out"
    else
      NAMES+=("PyTorch + PEFT (fp32, grad ckpt $ckpt)")
      RSS+=("?")
      SECS+=("died (no result line)")
    fi
  done
fi
echo
printf '%-42s %-16s %s\n' "run" "peak RSS MiB" "s/step"
for i in "${!NAMES[@]}"; do
  printf '%-42s %-16s %s\n' "${NAMES[$i]}" "${RSS[$i]}" "${SECS[$i]}"
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) (end)"
