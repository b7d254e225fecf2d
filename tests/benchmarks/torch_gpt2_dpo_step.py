#!/usr/bin/env python3
"""Times a full fine-tuning DPO step of GPT-2 small in eager PyTorch on the CPU.

The baseline beside prefopt's `dpo_step_bench` (tests/benchmarks/
cpu_dpo_vs_torch.sh runs both on the same shapes, one after the other):

- Model: transformers' GPT2LMHeadModel from a GPT2Config (default GPT-2
  small: d 768, 12 layers, 12 heads, V 50257, tied input/output embeddings),
  random weights as transformers initializes them, fp32, SDPA attention,
  eager (no torch.compile), dropout off.
- Step, as TRL's DPOTrainer with precompute_ref_log_probs=True (prefopt's
  default: the reference log-probs are computed once before training, so
  they are not part of the timed step): the chosen and rejected sequences
  run as one batch of 2 (TRL's concatenated forward); sequence log-probs are
  summed over the response tokens with a gather minus a per-row logsumexp
  (TRL's selective_log_softmax), every position's logits computed as TRL's
  default use_logits_to_keep=False does; the loss is TRL's sigmoid loss
  -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), beta 0.1; gradient
  clipping at 1.0 and AdamW (lr 1e-5) as the Hugging Face Trainer.

Prints the step time, tokens/s (all 2 * (prompt + response) tokens of the
pair), the peak RSS (getrusage ru_maxrss: this process's VmHWM) and one line
"torch_gpt2_dpo_step: {json}".
"""

import argparse
import json
import resource
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n_embd", type=int, default=768)
    ap.add_argument("--n_layer", type=int, default=12)
    ap.add_argument("--n_head", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T = args.prompt + args.response
    config = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=T, n_embd=args.n_embd,
        n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    model.config._attn_implementation = "sdpa"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def batch():
        prompt = torch.randint(0, args.vocab, (args.prompt,))
        chosen = torch.randint(0, args.vocab, (args.response,))
        rejected = torch.randint(0, args.vocab, (args.response,))
        return torch.stack([torch.cat([prompt, chosen]),
                            torch.cat([prompt, rejected])])

    def sequence_logps(logits, ids):
        logits = logits[:, :-1]
        labels = ids[:, 1:]
        tok = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        tok = tok - torch.logsumexp(logits, dim=-1)
        return tok[:, args.prompt - 1:].sum(-1)

    def step(ids, ref):
        logits = model(ids).logits
        logps = sequence_logps(logits, ids)
        margin = (logps[0] - ref[0]) - (logps[1] - ref[1])
        loss = -F.logsigmoid(args.beta * margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    batches = [batch() for _ in range(args.warmup + args.steps)]
    # The precomputed reference log-probs: the initial model, no gradients.
    with torch.no_grad():
        refs = [sequence_logps(model(ids).logits, ids) for ids in batches]
    for i in range(args.warmup):
        step(batches[i], refs[i])
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(batches[i], refs[i])
    seconds = (time.perf_counter() - t0) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "step_s": round(seconds, 4),
        "tokens_per_s": round(2 * T / seconds, 1),
        "peak_rss_mib": round(peak, 1),
    }
    print(f"step time    {seconds:.3f} s (mean of {args.steps} after "
          f"{args.warmup} warm-up)")
    print(f"tokens/s     {2 * T / seconds:.1f}")
    print(f"peak RSS     {peak:.0f} MiB")
    print("torch_gpt2_dpo_step: " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
