"""Checks that transformers loads what ExportHfModel writes (not part of
`bazel test`).

For the GPT-2 fixture (tests/fixtures/gpt2/policy: tied embeddings, no
tokenizer), a tiny GPT-2 built here with untied embeddings and a byte-level
BPE tokenizer, and tiny seeded Llama (llama3 rope scaling), Mistral and Qwen2
models from the configs in trainer/io/testdata/configs (whose q/k/v and
gate/up projections prefopt holds fused), this runs
//trainer/checkpoint:export_tool to export each model (HF folder -> Decoder ->
ExportHfModel, as `prefopt export` does) as F32, BF16 and F16, each as one
file and sharded; to save it as a checkpoint (SaveCheckpoint); and to export
that checkpoint (LoadCheckpoint -> ExportHfModel) as F32 and BF16. It loads
every result, the checkpoint folder itself included, with
AutoModelForCausalLM.from_pretrained and requires:
  - the same model class, no missing, unexpected or mismatched weights, and
    dtype="auto" giving the exported dtype;
  - every weight equal bit for bit to torch's own .to(dtype) of the original;
  - logits (computed in fp32) within 1e-5 of the original model's for F32, and
    within 1e-5 of the original model with its weights rounded by torch to
    BF16/F16 for those (the export must round exactly as torch does; the
    distance to the unrounded fp32 logits is printed for information);
  - where the source has a tokenizer, AutoTokenizer.from_pretrained(export)
    encoding a sample exactly as the source tokenizer does.

Given the prefopt binary as well, it also trains the GPT-2 fixture and the
untied GPT-2 for 2 DPO steps with `prefopt train` (on the fixture pairs), runs
`prefopt export` on the run dir (its latest checkpoint) as F32 and BF16, and
requires the same of each export against the trained checkpoint (loaded by
transformers as it is), whose weights must differ from the initial ones.

Run from the repository root:

    bazel --output_base=/root/.cache/bazel_ob_ckpt build --symlink_prefix=/ \\
        //trainer/checkpoint:export_tool //launch:prefopt
    BIN=$(bazel --output_base=/root/.cache/bazel_ob_ckpt info bazel-bin)
    /opt/fixenv/bin/python tests/export/check_export_with_transformers.py \\
        $BIN/trainer/checkpoint/export_tool [$BIN/launch/prefopt]

Checked with Python 3.11.7, torch 2.6.0+cu124 (CPU), transformers 4.57.1,
tokenizers 0.22.2, safetensors 0.8.0; and again, all 49 cases ok, with
torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3, safetensors 0.8.0
(/opt/ref-venv/bin/python, the venv of tests/fixtures/generate_transformers5.py).
"""

import os
import subprocess
import sys
import tempfile

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer,
                          GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "gpt2", "policy")
CONFIGS = os.path.join(ROOT, "trainer", "io", "testdata", "configs")
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
SAMPLE = "The quick brown fox jumps over the lazy dog."


def untied_gpt2_with_tokenizer(out_dir):
    """A seeded GPT-2 with a separate lm_head and a byte-level BPE tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([SAMPLE, "pack my box with five dozen jugs"] * 20,
                                  trainer)
    fast = GPT2TokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                             bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(fast), n_positions=32, n_embd=16, n_layer=2,
                        n_head=2, tie_word_embeddings=False, bos_token_id=eos,
                        eos_token_id=eos, attn_pdrop=0.0, embd_pdrop=0.0,
                        resid_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


def tiny_model(config_dir, out_dir):
    """A seeded random model for the config in `config_dir`."""
    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    return out_dir


def logits_of(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


def rounded_logits(source, dtype, ids):
    """The fp32 logits of the source model with its weights rounded by torch
    to `dtype`: what an export to `dtype` must reproduce."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    return logits_of(model, ids)


def check_folder(out, original, dtype, expected, ids, source, has_tokenizer):
    """Loads the folder `out`; returns the problems found and its fp32 logits."""
    problems = []
    model, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True)
    if type(model) is not type(original):
        problems.append(f"class {type(model).__name__}")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info[key]:
            problems.append(f"{key} {info[key]}")
    auto = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    if auto.dtype != dtype:
        problems.append(f"dtype='auto' loads {auto.dtype}")
    stored = auto.state_dict()
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    for key, value in original.state_dict().items():
        got = stored[key]
        if got.dtype != dtype or not torch.equal(got.view(bits),
                                                 value.to(dtype).view(bits)):
            problems.append(f"weight {key} differs")
    logits = logits_of(model, ids)
    error = (logits - expected).abs().max().item()
    if error > 1e-5:
        problems.append(f"logits differ by {error:.3g}")
    if has_tokenizer:
        source_ids = AutoTokenizer.from_pretrained(source)(SAMPLE)["input_ids"]
        export_ids = AutoTokenizer.from_pretrained(out)(SAMPLE)["input_ids"]
        if export_ids != source_ids:
            problems.append("tokenizer encodes differently")
    return problems, logits


def check(tool, name, source, work):
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    vocab = original.config.vocab_size
    ids = torch.tensor([[0, 3, 1, 4, 1, 5, 2, 6, 5, 3, vocab - 1]])
    reference = logits_of(original, ids)
    has_tokenizer = os.path.exists(os.path.join(source, "tokenizer.json"))
    expected = {d: rounded_logits(source, dtype, ids) for d, dtype in DTYPES.items()}

    # (label, folder, dtype name) of every folder to load.
    folders = []
    for dtype_name in DTYPES:
        for shard_bytes in (1 << 30, 8000):
            out = os.path.join(work, f"{name}_{dtype_name}_{shard_bytes}")
            command = [tool, "export", source, out, dtype_name, str(shard_bytes)]
            if has_tokenizer:
                command.append(source)
            subprocess.run(command, check=True)
            sharded = os.path.exists(os.path.join(out, "model.safetensors.index.json"))
            folders.append((f"{dtype_name} {'sharded' if sharded else 'one file'}",
                            out, dtype_name))
    # The checkpoint folder loads as it is (fp32), and exports from it.
    checkpoint = subprocess.run(
        [tool, "checkpoint", source, os.path.join(work, f"{name}_run")],
        check=True, capture_output=True, text=True).stdout.strip()
    folders.append(("checkpoint", checkpoint, "F32"))
    for dtype_name in ("F32", "BF16"):
        out = os.path.join(work, f"{name}_from_checkpoint_{dtype_name}")
        subprocess.run([tool, "export-checkpoint", checkpoint, out, dtype_name,
                        str(1 << 30)], check=True)
        folders.append((f"checkpoint->{dtype_name}", out, dtype_name))

    failures = []
    for label, out, dtype_name in folders:
        problems, logits = check_folder(out, original, DTYPES[dtype_name],
                                        expected[dtype_name], ids, source,
                                        has_tokenizer)
        error = (logits - expected[dtype_name]).abs().max().item()
        vs_fp32 = (logits - reference).abs().max().item()
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        print(f"{name:12s} {label:17s} {len(os.listdir(out)):2d} files  "
              f"max|logits-expected| {error:.2e}  vs fp32 {vs_fp32:.2e}  {status}")
        if problems:
            failures.append((name, label, problems))
    return failures


TRAIN_CONFIG = """
model {{ hf_path: "{model}" }}
data {{ train_files: "{pairs}" max_length: 32 }}
objective {{ dpo {{ beta: 0.1 }} }}
optimizer {{ lr: 1e-2 }}
batch {{ micro_batch_size: 2 global_batch_size: 2 }}
max_steps: 2
"""


def check_trained(prefopt, name, source, work):
    """Trains `source` with `prefopt train`, exports the run with `prefopt
    export` and checks each export against the trained checkpoint."""
    run = os.path.join(work, f"{name}_trained")
    config = os.path.join(work, f"{name}_train.textproto")
    with open(config, "w") as f:
        f.write(TRAIN_CONFIG.format(model=source, pairs=os.path.join(
            ROOT, "tests", "fixtures", "gpt2", "pairs.jsonl")))
    subprocess.run([prefopt, "train", f"--config={config}", f"--run_dir={run}"],
                   check=True, capture_output=True)
    checkpoint = os.path.join(run, "checkpoints", "step_2")
    trained = AutoModelForCausalLM.from_pretrained(checkpoint,
                                                   dtype=torch.float32).eval()
    initial = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    failures = []
    if all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                             initial.state_dict().values())):
        failures.append((name, "trained", ["training left the weights unchanged"]))
    vocab = trained.config.vocab_size
    ids = torch.tensor([[0, 3, 1, 4, 1, 5, 2, 6, 5, 3, vocab - 1]])
    reference = logits_of(trained, ids)
    has_tokenizer = os.path.exists(os.path.join(source, "tokenizer.json"))
    for dtype_name, flag in (("F32", "fp32"), ("BF16", "bf16")):
        out = os.path.join(work, f"{name}_trained_{flag}")
        subprocess.run([prefopt, "export", f"--checkpoint={run}", f"--out={out}",
                        f"--dtype={flag}"], check=True, capture_output=True)
        expected = rounded_logits(checkpoint, DTYPES[dtype_name], ids)
        problems, logits = check_folder(out, trained, DTYPES[dtype_name], expected,
                                        ids, source, has_tokenizer)
        error = (logits - expected).abs().max().item()
        vs_fp32 = (logits - reference).abs().max().item()
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        print(f"{name:12s} {'trained->' + dtype_name:17s} {len(os.listdir(out)):2d} "
              f"files  max|logits-expected| {error:.2e}  vs fp32 {vs_fp32:.2e}  "
              f"{status}")
        if problems:
            failures.append((name, f"trained->{dtype_name}", problems))
    return failures


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    tool = os.path.abspath(sys.argv[1])
    prefopt = os.path.abspath(sys.argv[2]) if len(sys.argv) == 3 else None
    torch.set_num_threads(1)
    failures = []
    with tempfile.TemporaryDirectory() as work:
        sources = {
            "gpt2_fixture": FIXTURE,
            "gpt2_untied": untied_gpt2_with_tokenizer(os.path.join(work, "untied")),
        }
        for name in ("llama", "mistral", "qwen2"):
            sources[name] = tiny_model(os.path.join(CONFIGS, name),
                                       os.path.join(work, f"{name}_source"))
        for name, source in sources.items():
            failures += check(tool, name, source, work)
        if prefopt is not None:
            for name in ("gpt2_fixture", "gpt2_untied"):
                failures += check_trained(prefopt, name, sources[name], work)
        print("files of an export with a tokenizer:",
              sorted(os.listdir(os.path.join(work, "gpt2_untied_F32_1073741824"))))
        checkpoint = os.path.join(work, "gpt2_untied_run", "checkpoints", "step_0")
        print("files of its checkpoint:", sorted(os.listdir(checkpoint)))
    if failures:
        print(f"{len(failures)} FAILED")
        sys.exit(1)
    print("all exports load in transformers")


if __name__ == "__main__":
    main()
