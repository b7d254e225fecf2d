#!/usr/bin/env python3
"""Every bad input reported against prefopt (issue 17's campaign), replayed.

Each case builds a broken input in a temporary folder from the repository's
fixtures, runs the prefopt binary on it (20 s limit, 4 GiB address space, so
that an unbounded allocation fails fast instead of swapping), and classifies
the outcome:

    error   a non-zero exit below 128 whose output holds the expected words
            (the file and the problem)
    ok      exit 0 where the input is fine once read correctly (a flag
            value that only overflowed arithmetic), with the expected words
    silent  exit 0: it loaded or trained on the bad input
    crash   killed by a signal (abort, segfault, out of memory)
    hang    still running at the limit
    vague   an error exit without the expected words

It prints one table row per case and exits 1 unless every case has the
outcome it should (`error`, or `ok` where marked).
Run by //tests:bad_input_test; to see how an older build fared, point it at
that build's binary:

    python3 tests/bad_input/run_reproducers.py --prefopt PATH/TO/prefopt
"""

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading

# Under `bazel test` the fixtures are in the runfiles; else next to this file.
ROOT = (os.path.join(os.environ["TEST_SRCDIR"], os.environ["TEST_WORKSPACE"])
        if "TEST_SRCDIR" in os.environ else
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
GPT2 = os.path.join(FIXTURES, "gpt2", "policy")
LLAMA_BIASED = os.path.join(FIXTURES, "llama", "tied", "policy")
TEXT_MODEL = os.path.join(FIXTURES, "text_model")
PAIRS = os.path.join(FIXTURES, "gpt2", "pairs.jsonl")
LIMIT_SECONDS = 20
ADDRESS_SPACE = 4 << 30


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class Case:
    def __init__(self, name, input_class, expect, want="error",
                 file_size_limit=None):
        self.name, self.input_class, self.expect = name, input_class, expect
        # "error", or "ok" for an input that is fine once read correctly.
        self.want = want
        # Bytes a file the run writes may reach (a full disk, as RLIMIT_FSIZE
        # with SIGXFSZ ignored makes writes fail with EFBIG).
        self.file_size_limit = file_size_limit


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def model_copy(tmp, source, name, config_patch=None, generation_patch=None):
    out = os.path.join(tmp, name)
    shutil.copytree(source, out)
    if config_patch is not None:
        config = read_json(os.path.join(out, "config.json"))
        config.update(config_patch)
        write_json(os.path.join(out, "config.json"), config)
    if generation_patch is not None:
        write(os.path.join(out, "generation_config.json"), generation_patch)
    return out


def nested(depth, leaf="1"):
    return "[" * depth + leaf + "]" * depth


def train_config(tmp, name, body, model=GPT2, data=PAIRS, dpo="",
                 max_steps=1):
    path = os.path.join(tmp, name + ".textproto")
    write(path, f'model {{ hf_path: "{model}" }}\n'
                f'data {{ train_files: "{data}" max_length: 32 }}\n'
                f'objective {{ dpo {{ {dpo} }} }}\n'
                'optimizer { lr: 1e-3 }\n'
                'batch { micro_batch_size: 2 global_batch_size: 2 }\n'
                f'max_steps: {max_steps}\n'
                f'run_dir: "{os.path.join(tmp, "run_" + name)}"\n' + body)
    return path


def generate(model, *extra):
    return ["generate", f"--model={model}", "--prompt_ids=1",
            "--max_new_tokens=1", *extra]


def cases(tmp):
    """(Case, argv after the binary, optional function run after it starts)."""
    out = []

    def add(name, input_class, expect, argv, want="error"):
        out.append((Case(name, input_class, expect, want), argv, None))

    # config.json sizes that allocated until std::bad_alloc or the OOM killer.
    for field, value in (("vocab_size", 2**31 - 1), ("n_embd", 1 << 30),
                         ("n_positions", 2**31 - 1)):
        model = model_copy(tmp, GPT2, "huge_" + field, {field: value})
        add(f"config.json {field} {value}", "config.json", [model, field],
            generate(model))
    # Nesting that overflowed the stack.
    model = model_copy(tmp, GPT2, "deep_config")
    with open(os.path.join(model, "config.json")) as f:
        text = f.read()
    write(os.path.join(model, "config.json"),
          text.replace('"use_cache": true', '"extra": ' + nested(100000)))
    add("config.json nested 100000 deep", "config.json", ["config.json", "nest"],
        generate(model))
    model = model_copy(tmp, GPT2, "deep_generation",
                       generation_patch='{"eos_token_id": ' + nested(100000) + "}")
    add("generation_config.json eos_token_id nested", "config.json",
        ["generation_config.json"], generate(model))
    model = model_copy(tmp, GPT2, "big_number")
    with open(os.path.join(model, "config.json")) as f:
        text = f.read()
    write(os.path.join(model, "config.json"),
          text.replace('"initializer_range": 0.2', '"initializer_range": 1e400'))
    add("config.json number 1e400", "config.json", ["config.json"], generate(model))
    # Values that loaded silently.
    for name, patch, words in (
            ("layer_norm_epsilon -1", {"layer_norm_epsilon": -1}, ["layer_norm_epsilon"]),
            ("eos_token_id 5000", {"eos_token_id": 5000}, ["eos_token_id", "5000"]),
            ("bos_token_id -3", {"bos_token_id": -3}, ["bos_token_id"]),
            ("n_layer 1 over 2 layers", {"n_layer": 1}, ["n_layer"])):
        model = model_copy(tmp, GPT2, name.replace(" ", "_"), patch)
        add(f"config.json {name}", "config.json", [model] + words, generate(model))
    for name, patch, words in (
            ("rope_theta -5", {"rope_theta": -5.0}, ["rope_theta"]),
            ("rms_norm_eps -1e-6", {"rms_norm_eps": -1e-6}, ["rms_norm_eps"]),
            ("attention_bias false over bias tensors",
             {"attention_bias": False, "mlp_bias": False}, ["bias"])):
        model = model_copy(tmp, LLAMA_BIASED, "llama_" + name.split()[0], patch)
        add(f"config.json {name}", "config.json", [model] + words, generate(model))
    model = model_copy(tmp, GPT2, "bad_generation",
                       generation_patch='{"eos_token_id": "x"}')
    add("generation_config.json eos_token_id \"x\"", "config.json",
        ["generation_config.json", "eos_token_id"], generate(model))

    # model.safetensors.
    model = model_copy(tmp, GPT2, "nan_weight")
    path = os.path.join(model, "model.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__")
    offset = 8 + header_len + info["data_offsets"][0]
    data[offset:offset + 4] = struct.pack("<f", float("nan"))
    with open(path, "wb") as f:
        f.write(data)
    add("model.safetensors NaN weight", "safetensors", [name, "NaN"], generate(model))
    model = model_copy(tmp, GPT2, "nul_padding")
    path = os.path.join(model, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + header_len].rstrip(b" ") + b"\0"
    header += b"\0" * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data[8 + header_len:])
    add("model.safetensors header padded with NUL", "safetensors",
        ["model.safetensors", "NUL"], generate(model))

    # tokenizer.json.
    model = model_copy(tmp, TEXT_MODEL, "many_added_tokens")
    tok = read_json(os.path.join(model, "tokenizer.json"))
    tok["added_tokens"] += [{"id": 1000 + i, "content": f"<x{i}>", "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": False,
                             "special": True} for i in range(300000)]
    write_json(os.path.join(model, "tokenizer.json"), tok)
    add("tokenizer.json 300k added tokens", "tokenizer.json",
        ["tokenizer.json", "outside the model's vocabulary"],
        ["generate", f"--model={model}", "--prompt=hi", "--max_new_tokens=1"])
    model = model_copy(tmp, TEXT_MODEL, "tokenizer_beyond_vocab")
    tok = read_json(os.path.join(model, "tokenizer.json"))
    tok["model"]["vocab"]["zzzz"] = 500
    write_json(os.path.join(model, "tokenizer.json"), tok)
    add("tokenizer.json id 500 in a 391-token model", "tokenizer.json",
        ["tokenizer.json", "500"],
        ["generate", f"--model={model}", "--prompt=hi", "--max_new_tokens=1"])
    model = model_copy(tmp, TEXT_MODEL, "deep_tokenizer")
    with open(os.path.join(model, "tokenizer.json")) as f:
        text = f.read()
    write(os.path.join(model, "tokenizer.json"),
          text.replace('"truncation": null', '"truncation": ' + nested(100000), 1))
    add("tokenizer.json nested 100000 deep", "tokenizer.json",
        ["tokenizer.json", "nest"],
        ["generate", f"--model={model}", "--prompt=hi", "--max_new_tokens=1"])

    # Data files.
    data = os.path.join(tmp, "big_number.jsonl")
    write(data, '{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], '
                '"preference_fraction": 1e400}\n')
    add("JSONL number 1e400", "JSONL", ["big_number.jsonl:1"],
        ["train", "--config=" + train_config(tmp, "big_number", "", data=data)])
    data = os.path.join(tmp, "deep_chat.jsonl")
    write(data, '{"prompt": [{"role": "user", "content": ' + nested(100000, '"x"') +
          '}], "chosen": [], "rejected": []}\n')
    add("JSONL chat message nested 100000 deep", "JSONL", ["deep_chat.jsonl:1"],
        ["train", "--config=" + train_config(tmp, "deep_chat", "", data=data)])
    add("train_files=/dev/zero", "special file", ["/dev/zero"],
        ["train", "--config=" + train_config(tmp, "dev_zero", "", data="/dev/zero")])
    fifo = os.path.join(tmp, "fifo.jsonl")
    os.mkfifo(fifo)
    add("train_files is a FIFO", "special file", ["fifo.jsonl", "FIFO"],
        ["train", "--config=" + train_config(tmp, "fifo", "", data=fifo)])

    # Configs and flags.
    add("loss_type: 99", "config", ["loss_type", "99"],
        ["train", "--config=" + train_config(tmp, "enum", "", dpo="loss_type: 99")])
    add("micro_batch_size 2000000000", "config", ["micro_batch_size"],
        ["train", "--config=" + train_config(tmp, "micro", ""),
         "--set=batch.micro_batch_size=2000000000",
         "--set=batch.global_batch_size=2000000000"])
    path = os.path.join(tmp, "nul_path.textproto")
    write(path, open(train_config(tmp, "nul", "")).read().replace(
        f'train_files: "{PAIRS}"', f'train_files: "{PAIRS}\\000.extra"'))
    add("NUL byte in a textproto path", "config", ["train_files", "NUL"],
        ["train", "--config=" + path])
    path = train_config(tmp, "long_field", "x" * (5 << 20) + ": 1\n")
    add("unknown field with a 5 MB name", "config", ["bytes)"],
        ["train", "--config=" + path])
    add("--max_new_tokens=2147483647 (int overflow)", "flags",
        ["max_new_tokens"],
        ["generate", f"--model={GPT2}", "--prompt_ids=1",
         "--max_new_tokens=2147483647"], want="ok")

    # The run directory.
    run = os.path.join(tmp, "run_planted_link")
    os.makedirs(run)
    victim = os.path.join(tmp, "victim.txt")
    write(victim, "not prefopt's\n")
    os.symlink(victim, os.path.join(run, "metrics.jsonl"))
    add("run_dir/metrics.jsonl is a planted symlink", "run dir",
        ["metrics.jsonl", "link"],
        ["train", "--config=" + train_config(tmp, "planted_link", ""),
         f"--run_dir={run}"])
    out.append((Case("disk full while writing a checkpoint", "run dir",
                     ["cannot write"], file_size_limit=16 << 10),
                ["train", "--config=" + train_config(
                    tmp, "disk_full", "save_every_steps: 1\n")], None))

    # Checkpoint manifest, forged and re-signed.
    run = os.path.join(tmp, "run_ckpt")
    config = train_config(tmp, "ckpt", "save_every_steps: 1\n", max_steps=2)
    out.append((Case("checkpoint optimizer_step: -5 (re-signed)", "checkpoint",
                     ["optimizer_step"]),
                ["train", f"--config={config}",
                 "--resume=" + os.path.join(run, "checkpoints", "step_1")],
                ("forge", config, run)))
    return out


def forge_checkpoint(binary, config, run):
    """Trains one step with a checkpoint, then sets its manifest's
    optimizer_step to -5 and writes the matching CRC into COMPLETE."""
    subprocess.run([binary, "train", f"--config={config}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(run, "checkpoints", "step_1")
    manifest = os.path.join(ckpt, "manifest.textproto")
    with open(manifest) as f:
        text = f.read()
    lines = [("optimizer_step: -5" if line.startswith("optimizer_step:") else line)
             for line in text.split("\n")]
    forged = "\n".join(lines).encode()
    with open(manifest, "wb") as f:
        f.write(forged)
    with open(os.path.join(ckpt, "COMPLETE")) as f:
        complete = f.read()
    key = "manifest_crc32c: 0x"
    start = complete.index(key) + len(key)
    end = start
    while end < len(complete) and complete[end] in "0123456789abcdefABCDEF":
        end += 1
    with open(os.path.join(ckpt, "COMPLETE"), "w") as f:
        f.write(complete[:start] + "%08x" % crc32c(forged) + complete[end:])


def limits(file_size_limit):
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (file_size_limit, file_size_limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        os.setsid()
    return apply


def run_case(binary, case, argv):
    proc = subprocess.Popen([binary, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            preexec_fn=limits(case.file_size_limit))
    output = []

    def read():
        # At most 1 MB is kept: a message echoing 5 MB is itself the finding.
        data = proc.stdout.read(1 << 20)
        output.append(data)
        while proc.stdout.read(1 << 20):
            output[0] += b"."

    reader = threading.Thread(target=read)
    reader.start()
    try:
        code = proc.wait(timeout=LIMIT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join()
        return "hang", None, b"".join(output)
    reader.join()
    text = b"".join(output)
    if code < 0:
        return "crash", code, text
    if code == 0:
        ok = case.want == "ok" and all(
            word in text.decode("utf-8", "replace") for word in case.expect)
        return ("ok" if ok else "silent"), code, text
    if code >= 128:
        return "crash", code, text
    decoded = text.decode("utf-8", "replace")
    if len(text) > (64 << 10):
        return "vague", code, text
    if all(word in decoded for word in case.expect):
        return "error", code, text
    return "vague", code, text


def summary(outcome, code, text):
    if outcome == "hang":
        return f"hang (killed after {LIMIT_SECONDS} s)"
    if outcome == "crash" and code is not None and code < 0:
        return f"crash ({signal.Signals(-code).name})"
    lines = [l for l in text.decode("utf-8", "replace").splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    if len(last) > 110:
        last = last[:110] + "…"
    return f"{outcome} (exit {code}): {last.replace('|', '/')}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefopt", required=True)
    args = parser.parse_args()
    binary = os.path.abspath(args.prefopt)
    failures = 0
    print("| input | case | outcome |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case, argv, extra in cases(tmp):
            if extra is not None and extra[0] == "forge":
                forge_checkpoint(binary, extra[1], extra[2])
            outcome, code, text = run_case(binary, case, argv)
            if outcome != case.want:
                failures += 1
            print(f"| {case.input_class} | {case.name} | {summary(outcome, code, text)} |",
                  flush=True)
    print(f"{failures} case(s) not answered with a clear error")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
