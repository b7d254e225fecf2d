#!/usr/bin/env python3
"""End-to-end DPO parity: TRL's DPOTrainer and `prefopt train`, same model,
data and settings, 12 optimizer steps; every metric both log, at every step,
and the final weights are compared.

Not part of `bazel test` (it needs torch, transformers and TRL). Run from the
repository root, with the versions it was last run with:

    python3 -m venv /opt/ref-venv
    /opt/ref-venv/bin/pip install torch==2.15.0 transformers==5.24.0 \\
        trl==1.16.0 tokenizers==0.23.3 safetensors==0.8.0 datasets accelerate
    bazel build //launch:prefopt
    /opt/ref-venv/bin/python tests/trl_parity/run_trl_parity.py \\
        --prefopt bazel-bin/launch/prefopt [--out /tmp/trl_parity]

The model is tests/fixtures/text_model (a tiny GPT-2 with its own byte-level
BPE tokenizer, whose post-processor adds a BOS as Llama 3's does), the data its
pref.jsonl (8 text pairs, including a prompt ending in a space and a response
ending with the EOS text), so TRL's tokenization is exercised too. Both sides
run with their defaults except: learning rate 1e-3 (TRL's 1e-6 moves this
model too little to compare), 12 steps, and on TRL's side what a CPU run
needs (use_cpu, bf16 off, logging every step). The batch, 8 pairs per step,
is all of the data, so each step sees every pair whatever the shuffled order.

Exit status 0 when every compared metric agrees at every step within relative
1e-4 (absolute 1e-6 near zero) and every final weight within 1e-3 x lr x
steps. It prints a table and writes <out>/result.json.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import datasets  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

datasets.disable_progress_bars()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "fixtures", "text_model")
DATA = os.path.join(MODEL, "pref.jsonl")
STEPS = 12
LR = 1e-3
REL, ABS = 1e-4, 1e-6


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_trl(out):
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in read_jsonl(DATA)]
    args = DPOConfig(output_dir=os.path.join(out, "trl"), learning_rate=LR,
                     max_steps=STEPS, logging_steps=1, use_cpu=True,
                     bf16=False, report_to=[], save_strategy="no",
                     disable_tqdm=True, dataset_num_proc=None)
    trainer = DPOTrainer(model=MODEL, args=args,
                         train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(MODEL))
    trainer.train()
    trainer.save_model(os.path.join(out, "trl", "final"))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == STEPS, logs
    config = {k: str(getattr(args, k)) for k in (
        "learning_rate", "per_device_train_batch_size", "num_train_epochs",
        "max_steps", "lr_scheduler_type", "warmup_steps", "max_grad_norm",
        "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "seed",
        "beta", "loss_type", "max_length", "truncation_mode", "optim")}
    return logs, config


def run_prefopt(prefopt, out):
    run_dir = os.path.join(out, "prefopt")
    config = os.path.join(out, "prefopt.textproto")
    with open(config, "w") as f:
        f.write(f'model {{ hf_path: "{MODEL}" }}\n'
                f'data {{ train_files: "{DATA}" }}\n'
                'objective { dpo {} }\n'
                f'optimizer {{ lr: {LR} }}\n'
                f'max_steps: {STEPS}\n'
                f'run_dir: "{run_dir}"\n'
                f'export_hf_path: "{os.path.join(run_dir, "final")}"\n')
    subprocess.run([prefopt, "train", f"--config={config}"], check=True)
    logs = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert len(logs) == STEPS, len(logs)
    return logs


def close(ours, theirs):
    return abs(ours - theirs) <= max(ABS, REL * abs(theirs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefopt", required=True)
    parser.add_argument("--out", default="/tmp/trl_parity")
    a = parser.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    trl_logs, trl_config = run_trl(a.out)
    ours = run_prefopt(os.path.abspath(a.prefopt), a.out)

    names = {"learning_rate": "lr"}
    for key in trl_logs[0]:
        if key in ours[0] and key not in ("epoch", "step"):
            names[key] = key
    only_trl = sorted(k for k in trl_logs[0] if k not in names and
                      k not in ("learning_rate", "epoch", "step"))
    rows, worst, failures = [], {}, 0
    for step, (theirs, mine) in enumerate(zip(trl_logs, ours), start=1):
        pairs = {name: (mine[ours_key], theirs[name])
                 for name, ours_key in names.items()}
        for name, (x, y) in pairs.items():
            err = abs(x - y) / max(abs(y), ABS / REL)
            worst[name] = max(worst.get(name, 0.0), err)
            if not close(x, y):
                failures += 1
                print(f"step {step}: {name}: prefopt {x!r} TRL {y!r}")
        rows.append({"step": step, "prefopt": {k: v[0] for k, v in pairs.items()},
                     "trl": {k: v[1] for k, v in pairs.items()}})

    theirs_w = load_file(os.path.join(a.out, "trl", "final", "model.safetensors"))
    mine_w = load_file(os.path.join(a.out, "prefopt", "final", "model.safetensors"))
    initial = load_file(os.path.join(MODEL, "model.safetensors"))
    weight_diff, moved = 0.0, 0.0
    for name, t in theirs_w.items():
        assert name in mine_w, f"prefopt's export lacks {name}"
        weight_diff = max(weight_diff, (mine_w[name].float() - t.float()).abs().max().item())
        moved = max(moved, (t.float() - initial[name].float()).abs().max().item())
    # AdamW divides each gradient by its running RMS, so where a gradient is
    # near zero, summation-order differences of 1e-7 become visible update
    # differences; the bound is 0.1% of the distance AdamW can move a weight
    # in these steps (about lr per step).
    weight_bound = 1e-3 * LR * STEPS
    weights_ok = weight_diff <= weight_bound
    print(f"{'metric':32s} worst relative difference over {STEPS} steps")
    for name, err in worst.items():
        print(f"{name:32s} {err:.2e}")
    print(f"final weights: max |prefopt - TRL| {weight_diff:.2e} "
          f"(bound {weight_bound:.1e}; the most any weight moved: {moved:.2e})")
    print("TRL metrics prefopt does not log:", ", ".join(only_trl) or "none")
    result = {
        "steps": rows, "worst_relative_difference": worst,
        "final_weights_max_abs_difference": weight_diff,
        "final_weights_max_abs_move": moved,
        "final_weights_bound": weight_bound, "trl_only_metrics": only_trl,
        "trl_config": trl_config,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "trl": trl.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__},
        "passed": failures == 0 and weights_ok,
    }
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("PASS" if result["passed"] else f"FAIL ({failures} values differ)")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
