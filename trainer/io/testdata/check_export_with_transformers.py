"""Checks that transformers loads model folders written by prefopt's
WriteHfConfig and WriteWeightStore (not part of `bazel test`).

For GPT-2 (the committed gpt2/ fixture) and for tiny random Llama (llama3 rope
scaling), Mistral and Qwen2 models built from the committed configs, this
re-writes the folder with //trainer/io:reexport as F32, BF16 and F16, each as
one file and sharded, then loads the result with AutoConfig and
AutoModelForCausalLM and requires: the same model class, no missing or
unexpected weights, every weight equal bit for bit to torch's own
`.to(dtype)` of the original, and (F32) logits equal to the original model's.

Run from the repository root:

    bazel --output_base=/root/.cache/bazel_ob_io build --symlink_prefix=/ \\
        //trainer/io:reexport
    /opt/fixenv/bin/python trainer/io/testdata/check_export_with_transformers.py \\
        $(bazel --output_base=/root/.cache/bazel_ob_io info bazel-bin)/trainer/io/reexport

Checked with Python 3.11, torch 2.6.0, transformers 4.57.1, safetensors 0.8.0.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoConfig, AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def tiny_model_dir(config_dir, out_dir):
    """Saves a seeded random model for the config in `config_dir`."""
    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    return out_dir


def check(reexport, name, source_dir, work_dir):
    original = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[0, 3, 1, 4, 1, 5, 2, 6]])
    with torch.no_grad():
        reference_logits = original(ids).logits
    failures = []
    for dtype_name, dtype in DTYPES.items():
        for shard_bytes in (1 << 30, 1500):
            out = os.path.join(work_dir, f"{name}_{dtype_name}_{shard_bytes}")
            subprocess.run([reexport, source_dir, out, dtype_name, str(shard_bytes)],
                           check=True)
            files = sorted(os.listdir(out))
            sharded = "model.safetensors.index.json" in files
            config = AutoConfig.from_pretrained(out)
            model, info = AutoModelForCausalLM.from_pretrained(
                out, dtype=dtype, output_loading_info=True)
            problems = []
            if type(model) is not type(original):
                problems.append(f"class {type(model).__name__}")
            if config.dtype != dtype:
                problems.append(f"config dtype {config.dtype}")
            for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                if info[key]:
                    problems.append(f"{key} {info[key]}")
            written = model.state_dict()
            for key, value in original.state_dict().items():
                want = value.to(dtype)
                got = written[key]
                if got.dtype != dtype or not torch.equal(
                        got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                        want.view(torch.int16 if dtype != torch.float32 else torch.int32)):
                    problems.append(f"weight {key} differs")
            if dtype == torch.float32:
                with torch.no_grad():
                    logits = model.eval()(ids).logits
                if not torch.equal(logits, reference_logits):
                    problems.append("logits differ")
            status = "ok" if not problems else "FAIL: " + "; ".join(problems)
            layout = f"{len(files) - 2} shards + index" if sharded else "single file"
            print(f"{name:8s} {dtype_name:5s} {layout:20s} {type(model).__name__:20s} {status}")
            if problems:
                failures.append((name, dtype_name, shard_bytes, problems))
    return failures


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    reexport = os.path.abspath(sys.argv[1])
    failures = []
    with tempfile.TemporaryDirectory() as work:
        sources = {"gpt2": os.path.join(HERE, "gpt2")}
        for name in ("llama", "mistral", "qwen2"):
            sources[name] = tiny_model_dir(os.path.join(HERE, "configs", name),
                                           os.path.join(work, f"{name}_source"))
        for name, source in sources.items():
            failures += check(reexport, name, source, work)
        with open(os.path.join(work, "llama_F32_1500", "config.json")) as f:
            print("llama config written by WriteHfConfig:", json.dumps(json.load(f)))
    if failures:
        print(f"{len(failures)} FAILED")
        sys.exit(1)
    print("all exports load in transformers")


if __name__ == "__main__":
    main()
