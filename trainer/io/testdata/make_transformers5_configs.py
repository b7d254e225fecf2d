"""Writes the transformers 5 config fixtures of //trainer/io:hf_config_test.

transformers 5 keeps RoPE in one "rope_parameters" object; transformers 4 wrote
"rope_theta" and "rope_scaling". Each case below is a config.json in one of
the forms a user's folder can have; transformers 5 itself resolves it
(AutoConfig.from_pretrained) and the resolved RoPE is written beside it, so the
C++ test compares prefopt's reading against transformers 5's, not against
values typed here.

Run from the repository root (deterministic; rewrites configs_v5/ and
bad_configs_v5/ under trainer/io/testdata/):

    python3 -m venv /opt/ref-venv
    /opt/ref-venv/bin/pip install torch==2.15.0 transformers==5.24.0
    /opt/ref-venv/bin/python trainer/io/testdata/make_transformers5_configs.py

Outputs:
  configs_v5/<case>/config.json  read by prefopt; <case>/expected_rope.json is
                                 transformers 5's resolved rope_parameters.
  bad_configs_v5/<case>/config.json
                                 RoPE forms prefopt must refuse (transformers 5
                                 accepts them, but prefopt cannot compute them).
"""

import json
import os
import shutil

import transformers
from transformers import AutoConfig

OUT = os.path.dirname(os.path.abspath(__file__))


def read(path):
    with open(os.path.join(OUT, path, "config.json")) as f:
        return json.load(f)


def write(directory, config):
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def without(config, *keys):
    return {k: v for k, v in config.items() if k not in keys}


def main():
    v4 = {name: read(os.path.join("configs", name))
          for name in ("llama", "mistral", "qwen2")}
    v4["gpt2"] = read("gpt2")
    good = os.path.join(OUT, "configs_v5")
    shutil.rmtree(good, ignore_errors=True)
    # The v4 fixtures as transformers 5 saves them.
    for name, config in v4.items():
        directory = os.path.join(good, name)
        write(directory, config)
        AutoConfig.from_pretrained(directory).save_pretrained(directory)
        saved = read(directory)
        assert "rope_scaling" not in saved and "rope_theta" not in saved
    llama = v4["llama"]
    llama3 = dict(llama["rope_scaling"], rope_theta=llama["rope_theta"])
    cases = {
        # Both forms: transformers 5 takes rope_scaling and the top-level
        # rope_theta, ignoring rope_parameters.
        "llama_both_forms": dict(llama, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0}),
        # rope_parameters without rope_theta: the top-level one.
        "llama_theta_outside": dict(
            without(llama, "rope_scaling"),
            rope_parameters=without(llama3, "rope_theta")),
        # llama3 without original_max_position_embeddings: transformers 5
        # takes max_position_embeddings.
        "llama3_default_original": dict(
            without(llama, "rope_scaling", "rope_theta"),
            rope_parameters=without(llama3, "original_max_position_embeddings")),
        # The legacy "type" key inside rope_parameters.
        "llama_linear_type_key": dict(
            without(llama, "rope_scaling", "rope_theta"),
            rope_parameters={"type": "linear", "factor": 2.0,
                             "rope_theta": 1000.0}),
        # One object per layer type, all the same.
        "qwen2_per_layer_type": dict(
            without(v4["qwen2"], "rope_theta"),
            layer_types=["full_attention", "sliding_attention"],
            max_window_layers=2,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 5e5},
                "sliding_attention": {"rope_type": "default", "rope_theta": 5e5},
            }),
    }
    for name, config in cases.items():
        write(os.path.join(good, name), config)
    for name in sorted(os.listdir(good)):
        directory = os.path.join(good, name)
        resolved = AutoConfig.from_pretrained(directory)
        rope = getattr(resolved, "rope_parameters", None) or {}
        if "full_attention" in rope:
            rope = rope["full_attention"]
        with open(os.path.join(directory, "expected_rope.json"), "w") as f:
            json.dump({"rope_parameters": rope,
                       "max_position_embeddings": getattr(
                           resolved, "max_position_embeddings", None),
                       "transformers": transformers.__version__},
                      f, indent=2, sort_keys=True)
            f.write("\n")
        print(name, rope)

    bad = os.path.join(OUT, "bad_configs_v5")
    shutil.rmtree(bad, ignore_errors=True)
    base = without(llama, "rope_scaling", "rope_theta")
    bad_cases = {
        "yarn": dict(base, rope_parameters={
            "rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
        "partial_rotary": dict(base, rope_parameters={
            "rope_type": "default", "rope_theta": 1e4,
            "partial_rotary_factor": 0.5}),
        "per_layer_type_differs": dict(
            without(v4["qwen2"], "rope_theta"),
            layer_types=["full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            }),
        "not_an_object": dict(base, rope_parameters=[1e4]),
    }
    for name, config in bad_cases.items():
        write(os.path.join(bad, name), config)
        if name != "not_an_object":
            AutoConfig.from_pretrained(os.path.join(bad, name))


if __name__ == "__main__":
    main()
