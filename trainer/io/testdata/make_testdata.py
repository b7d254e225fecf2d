"""Writes the fixtures of //trainer/io tests with the real safetensors and
transformers libraries.

Run from the repository root (deterministic; rewrites trainer/io/testdata/):

    /opt/fixenv/bin/python trainer/io/testdata/make_testdata.py

Written with Python 3.11, torch 2.6.0, transformers 4.57.1, safetensors 0.8.0,
numpy 2.4.6. Not used by the build: the outputs are committed.

Outputs (all under trainer/io/testdata/):
  tensors.safetensors            one tensor of every dtype prefopt reads, with
                                 F16 subnormals, +-inf, NaNs and -0.
  tensors_expected.safetensors   torch's own conversions of those tensors:
                                 float ones as F32 (`.float()`), integer ones as
                                 I64 (`.long()`), under the same names.
  rounding.safetensors           "input" (F32 edge cases and random bit
                                 patterns) with torch's `.to(torch.bfloat16)`
                                 ("bf16") and `.to(torch.float16)` ("f16").
  gpt2/                          a tiny GPT2LMHeadModel.save_pretrained().
  gpt2_sharded/                  the same model saved with a small
                                 max_shard_size (shards + index.json).
  gpt2_expected.json             "tensors": per tensor of gpt2/, its shape,
                                 the fp32 bits of its first elements and the
                                 float64 sum of its values; "state_dict_order":
                                 the saved names in state_dict order (the order
                                 in which save_pretrained fills shards).
  configs/{llama,mistral,qwen2}/config.json
                                 tiny configs saved by the transformers classes.
  bad_configs/<case>/config.json configs ReadHfConfig must reject.
The transformers 5 forms of these configs are written by
make_transformers5_configs.py.
"""

import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          MistralConfig, Qwen2Config)

OUT = os.path.dirname(os.path.abspath(__file__))


def from_bits16(bits, dtype):
    return torch.from_numpy(np.array(bits, dtype=np.uint16).view(np.int16)).view(dtype)


def from_bits32(bits):
    return torch.from_numpy(np.array(bits, dtype=np.uint32).view(np.float32).copy())


def write_tensors():
    f16 = from_bits16([
        0x0000, 0x8000,  # +0, -0
        0x0001, 0x8001, 0x03FF, 0x0200,  # subnormals (smallest, largest, mid)
        0x0400, 0x7BFF, 0xFBFF,  # smallest normal, +-65504
        0x3C00, 0xC000, 0x3555,  # 1, -2, ~1/3
        0x7C00, 0xFC00,  # +-inf
        0x7E00, 0xFE01, 0x7C01, 0x7FFF,  # NaNs: quiet, negative, signaling, all ones
    ], torch.float16).reshape(3, 6)
    bf16 = from_bits16([
        0x0000, 0x8000, 0x0001, 0x807F,  # zeros and bf16 subnormals
        0x3F80, 0xC0A0, 0x7F7F, 0xFF7F,  # 1, -5, +-max
        0x7F80, 0xFF80, 0x7FC0, 0xFFC1,  # +-inf, NaNs
    ], torch.bfloat16).reshape(2, 2, 3)
    tensors = {
        "f32": torch.tensor([[1.5, -2.25, 3.0e-39], [float("inf"), -0.0, 7.0]],
                            dtype=torch.float32),
        "f16": f16,
        "bf16": bf16,
        "f64": torch.tensor([0.1, -1e-40, 1e300, -0.0, 1.0000000596046448,
                             3.4028235e38, -7.5], dtype=torch.float64),
        "i64": torch.tensor([0, -1, 2**40, -(2**62), 9], dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 5], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True], dtype=torch.bool),
        "scalar": torch.tensor(4.0, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    save_file(tensors, os.path.join(OUT, "tensors.safetensors"),
              metadata={"source": "make_testdata.py", "format": "pt"})
    expected = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            expected[name] = t.float().contiguous()
        else:
            expected[name] = t.long().contiguous()
    save_file(expected, os.path.join(OUT, "tensors_expected.safetensors"))


def write_rounding():
    bits = [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # zeros, infs
        0x7FC00000, 0xFFC00001, 0x7F800001,  # NaNs
        0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001,  # bf16 ties at 1
        0x3F801000, 0x3F803000, 0x3F801001,  # f16 ties at 1
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000,  # f16 max, overflow
        0xC77FF000, 0x501502F9, 0xD01502F9,  # -65520, +-1e10
        0x33800000, 0x33000000, 0x33400000, 0x34400000,  # f16 subnormal ties
        0x38800000, 0x387FC000, 0x387FE000,  # f16 min normal and below
        0x322BCC77, 0x3380D959,  # 1e-8, 6e-8
        0x7F7F0000, 0x7F7FFFFF, 0x7F7F7FFF, 0x7F7F8000,  # bf16 max, overflow
        0x00000001, 0x000AE398, 0x80400000,  # f32 subnormals
        0x3EAAAAAB, 0xBDCCCCCD, 0x40490FDB,  # 1/3, -0.1, pi
    ]
    rng = np.random.default_rng(1234)
    random_bits = rng.integers(0, 2**32, size=120, dtype=np.uint64).astype(np.uint32)
    # Keep random patterns finite so that their expected bits are exact.
    random_bits = [int(b) for b in random_bits if (b & 0x7F800000) != 0x7F800000]
    scaled = (torch.from_numpy(rng.standard_normal(48).astype(np.float32)) *
              torch.tensor([2.0**e for e in range(-30, 18)], dtype=torch.float32))
    x = torch.cat([from_bits32(bits + random_bits), scaled])
    save_file({"input": x, "bf16": x.to(torch.bfloat16), "f16": x.to(torch.float16)},
              os.path.join(OUT, "rounding.safetensors"))


def write_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16,
                        n_positions=8, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    for name in ("gpt2", "gpt2_sharded"):
        shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    model.save_pretrained(os.path.join(OUT, "gpt2"))
    model.save_pretrained(os.path.join(OUT, "gpt2_sharded"), max_shard_size="2KB")
    for name in ("gpt2", "gpt2_sharded"):
        os.remove(os.path.join(OUT, name, "generation_config.json"))
    saved = load_file(os.path.join(OUT, "gpt2", "model.safetensors"))
    expected = {"tensors": {}, "state_dict_order": [
        name for name in model.state_dict() if name in saved]}
    for name, t in sorted(saved.items()):
        flat = t.reshape(-1)
        expected["tensors"][name] = {
            "shape": list(t.shape),
            "first_bits": [int(v) & 0xFFFFFFFF for v in flat[:4].view(torch.int32).tolist()],
            "sum": float(flat.double().sum()),
        }
    with open(os.path.join(OUT, "gpt2_expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


def save_config(config, directory):
    shutil.rmtree(directory, ignore_errors=True)
    config.save_pretrained(directory)
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def write_json(directory, value, raw=None):
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(raw if raw is not None else json.dumps(value, indent=2) + "\n")


def write_configs():
    configs = os.path.join(OUT, "configs")
    llama = save_config(LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=1, eos_token_id=[2, 3],
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"], dtype=torch.bfloat16),
        os.path.join(configs, "llama"))
    mistral = save_config(MistralConfig(
        vocab_size=32, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=8,
        max_position_embeddings=64, sliding_window=None,
        architectures=["MistralForCausalLM"]),
        os.path.join(configs, "mistral"))
    qwen2 = save_config(Qwen2Config(
        vocab_size=32, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=1000000.0, use_sliding_window=False, sliding_window=8,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=5,
        architectures=["Qwen2ForCausalLM"]),
        os.path.join(configs, "qwen2"))

    with open(os.path.join(OUT, "gpt2", "config.json")) as f:
        gpt2 = json.load(f)
    bad = os.path.join(OUT, "bad_configs")
    shutil.rmtree(bad, ignore_errors=True)
    cases = {
        "unknown_arch": dict(gpt2, architectures=["BertForMaskedLM"], model_type="bert"),
        "model_type_mismatch": dict(gpt2, model_type="llama"),
        "gpt2_relu": dict(gpt2, activation_function="relu"),
        "gpt2_inverse_layer_idx": dict(gpt2, scale_attn_by_inverse_layer_idx=True),
        "gpt2_upcast": dict(gpt2, reorder_and_upcast_attn=True),
        "gpt2_string_size": dict(gpt2, n_embd="8"),
        "gpt2_heads": dict(gpt2, n_embd=9),
        "gpt2_missing_layers": {k: v for k, v in gpt2.items() if k != "n_layer"},
        "llama_gelu": dict(llama, hidden_act="gelu"),
        "llama_kv_heads": dict(llama, num_key_value_heads=3),
        "llama_yarn": dict(llama, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "llama_llama3_incomplete": dict(llama, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32, "low_freq_factor": "one"}),
        "llama_partial_rotary": dict(llama, partial_rotary_factor=0.5),
        "mistral_sliding": dict(mistral, sliding_window=16),
        "qwen2_sliding": dict(qwen2, use_sliding_window=True, sliding_window=16,
                              max_window_layers=0, layer_types=None),
    }
    for name, value in cases.items():
        write_json(os.path.join(bad, name), value)
    write_json(os.path.join(bad, "not_json"), None,
               raw='{\n  "model_type": "gpt2",\n  "n_embd": 8,,\n  "n_layer": 1\n}\n')


def main():
    write_tensors()
    write_rounding()
    write_gpt2()
    write_configs()


if __name__ == "__main__":
    main()
