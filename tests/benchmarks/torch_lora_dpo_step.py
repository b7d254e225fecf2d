#!/usr/bin/env python3
"""Times a LoRA DPO training step of a Llama-shaped model in PyTorch + PEFT on the CPU.

The baseline beside prefopt's `dpo_step_bench --lora_r=...`
(tests/benchmarks/lora_3b.sh runs both on the same shapes):

- Model: transformers' LlamaForCausalLM from a LlamaConfig (default
  Llama-3.2-3B's shape: d 3072, 28 layers, 24 heads, 8 KV heads, FF 8192,
  V 128256, tied input/output embeddings), random N(0, 0.02) weights, fp32,
  SDPA attention, eager (no torch.compile).
- Adapters: peft.get_peft_model with LoraConfig(r, lora_alpha, dropout 0,
  target_modules); the base frozen, as PEFT does.
- Step, as TRL's DPOTrainer with a peft model and no ref_model: the
  reference log-probs come from the same model under
  `model.disable_adapter()` with torch.no_grad(), every step; the policy runs
  the chosen and rejected sequences as one batch of 2 (TRL's concatenated
  forward); sequence log-probs are summed over the response tokens with TRL's
  selective_log_softmax (gather minus a per-row logsumexp, every position's
  logits computed as TRL's default use_logits_to_keep=False does); the loss
  is TRL's sigmoid loss -logsigmoid(beta * ((pi_c - ref_c) - (pi_r -
  ref_r))), beta 0.1; gradient clipping at 1.0 and AdamW (lr 1e-5) as the
  Hugging Face Trainer.
- --grad-ckpt on: model.gradient_checkpointing_enable(use_reentrant=False),
  as TRL users set gradient_checkpointing=True; off: every activation kept.

Prints the peak RSS (getrusage ru_maxrss: this process's VmHWM) and s/step,
then one line "torch_lora_dpo_step: {json}". Run it under
`prlimit --as=BYTES` so that running out of memory ends as a MemoryError
(exit 1, printed as "torch_lora_dpo_step: FAILED ...") rather than by the
kernel's OOM killer.
"""

import argparse
import json
import os
import resource
import sys
import time


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n_embd", type=int, default=3072)
    ap.add_argument("--n_layer", type=int, default=28)
    ap.add_argument("--n_head", type=int, default=24)
    ap.add_argument("--n_kv_head", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--response", type=int, default=1024)
    ap.add_argument("--lora_r", type=int, default=16)
    ap.add_argument("--lora_alpha", type=int, default=0,
                    help="default 2 * r")
    ap.add_argument("--lora_targets",
                    default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
                    "down_proj")
    ap.add_argument("--grad-ckpt", choices=["on", "off"], default="on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args()

    import peft
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T = args.prompt + args.response
    shape = (f"d={args.n_embd} layers={args.n_layer} heads={args.n_head} "
             f"kv_heads={args.n_kv_head} ff={args.intermediate} "
             f"V={args.vocab}")
    result = {
        "shape": shape, "prompt": args.prompt, "response": args.response,
        "lora_r": args.lora_r, "grad_ckpt": args.grad_ckpt,
        "threads": args.threads, "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
    }
    t_start = time.time()
    try:
        config = transformers.LlamaConfig(
            hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
            num_attention_heads=args.n_head,
            num_key_value_heads=args.n_kv_head,
            intermediate_size=args.intermediate, vocab_size=args.vocab,
            max_position_embeddings=T, tie_word_embeddings=True,
            rope_theta=500000.0, rms_norm_eps=1e-5, initializer_range=0.02,
            attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config).float()
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r,
            lora_dropout=0.0,
            target_modules=args.lora_targets.split(","),
            task_type="CAUSAL_LM"))
        if args.grad_ckpt == "on":
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        result["trainable_params"] = sum(p.numel() for p in params)
        result["total_params"] = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        result["build_s"] = round(time.time() - t_start, 1)
        result["rss_after_build_mib"] = round(peak_rss_mib())

        def logps_of(logits, ids):
            # TRL's selective_log_softmax on fp32 logits: gather minus a
            # logsumexp taken row by row.
            logits = logits[:, :-1]
            labels = ids[:, 1:]
            picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
            lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
            tok = picked - lse
            return tok[:, args.prompt - 1:].sum(-1)

        def step(ids):
            with torch.no_grad(), model.disable_adapter():
                ref = logps_of(model(input_ids=ids).logits, ids)
            pol = logps_of(model(input_ids=ids).logits, ids)
            u = args.beta * ((pol[0] - ref[0]) - (pol[1] - ref[1]))
            loss = -F.logsigmoid(u)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        def batch():
            prompt = torch.randint(0, args.vocab, (1, args.prompt))
            responses = torch.randint(0, args.vocab, (2, args.response))
            return torch.cat([prompt.repeat(2, 1), responses], dim=1)

        for _ in range(args.warmup):
            step(batch())
        times = []
        for _ in range(args.steps):
            ids = batch()
            t0 = time.time()
            result["loss"] = round(step(ids), 6)
            times.append(time.time() - t0)
        result["s_per_step"] = round(sum(times) / len(times), 2)
        result["peak_rss_mib"] = round(peak_rss_mib())
    except (MemoryError, RuntimeError) as e:
        result["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        result["peak_rss_mib"] = round(peak_rss_mib())
        result["failed_after_s"] = round(time.time() - t_start, 1)
        print(f"torch_lora_dpo_step: FAILED {json.dumps(result)}")
        return 1
    result["load_average"] = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"step time         {result['s_per_step']:.2f} s "
          f"(mean of {args.steps} after {args.warmup} warm-up)")
    print(f"peak RSS          {result['peak_rss_mib']:.0f} MiB")
    print(f"torch_lora_dpo_step: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
