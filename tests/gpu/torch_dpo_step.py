#!/usr/bin/env python3
"""Times DPO training steps of a 1B Llama-shaped model in eager PyTorch.

The baseline that prefopt's CUDA DPO step is compared with
(tests/gpu/run_gpu_checks.sh runs this on a GPU machine):

- Model: Llama-3.2-1B's shape (d=2048, 16 layers, 32 heads, 8 KV heads,
  FF=8192, V=128256, tied input/output embeddings, RMSNorm, RoPE, SwiGLU),
  random weights, written out in plain torch (no transformers dependency) and
  run eagerly (no torch.compile). Attention is F.scaled_dot_product_attention
  (causal; --attn math forces the unfused softmax path).
- Precision: fp32 master weights and AdamW state with torch.autocast(bfloat16),
  prefopt's CUDA precision (bf16 compute, fp32 weights); --pure-bf16 keeps the
  weights themselves in bf16.
- Batch: --pairs preference pairs (default 16), each a 1024-token prompt plus
  a 1024-token chosen and a 1024-token rejected response, run as TRL's
  concatenated forward in micro-batches of --micro-pairs pairs (default 4)
  with gradient accumulation, as prefopt's gpu_dpo_step_bench.
- Loss: TRL's sigmoid DPO loss,
  -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).mean(), with the
  sequence log-probs summed over response tokens and the reference log-probs
  precomputed (prefopt's default), beta = 0.1.

Prints one line "torch_dpo_step: {json}" with tokens/s (all 2 * pairs *
(prompt + response) tokens of a step), model FLOPs and MFU counted as
trainer/loop/gpu_dpo_step_bench.cc counts them (the output layer on the
response tokens only, although this script computes every position's
logits), and peak GPU memory (torch.cuda.max_memory_allocated). Without a GPU
it prints "SKIPPED: no GPU (...)" and exits 0; --device cpu --tiny runs tiny
shapes on the CPU instead (a dry run of the script: its times mean nothing).
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.attention
import torch.nn.functional as F


class Config:
    dim = 2048
    layers = 16
    heads = 32
    kv_heads = 8
    ff = 8192
    vocab = 128256
    rope_theta = 500000.0
    eps = 1e-5


class TinyConfig(Config):
    dim = 64
    layers = 2
    heads = 4
    kv_heads = 2
    ff = 128
    vocab = 256


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        hs = c.dim // c.heads
        self.c = c
        self.norm1 = torch.nn.RMSNorm(c.dim, eps=c.eps)
        self.qkv = torch.nn.Linear(c.dim, (c.heads + 2 * c.kv_heads) * hs,
                                   bias=False)
        self.proj = torch.nn.Linear(c.dim, c.dim, bias=False)
        self.norm2 = torch.nn.RMSNorm(c.dim, eps=c.eps)
        self.gate_up = torch.nn.Linear(c.dim, 2 * c.ff, bias=False)
        self.down = torch.nn.Linear(c.ff, c.dim, bias=False)

    def forward(self, x, cos, sin, attn):
        c = self.c
        b, t, _ = x.shape
        hs = c.dim // c.heads
        q, k, v = self.qkv(self.norm1(x)).split(
            [c.heads * hs, c.kv_heads * hs, c.kv_heads * hs], dim=-1)
        q = q.view(b, t, c.heads, hs).transpose(1, 2)
        k = k.view(b, t, c.kv_heads, hs).transpose(1, 2)
        v = v.view(b, t, c.kv_heads, hs).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        group = c.heads // c.kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        if attn == "math":
            with torch.nn.attention.sdpa_kernel(
                    torch.nn.attention.SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c.dim))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rotate(x, cos, sin):
    """transformers' rotate_half RoPE."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Llama(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = torch.nn.Embedding(c.vocab, c.dim)
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = torch.nn.RMSNorm(c.dim, eps=c.eps)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids, attn):
        c = self.c
        t = ids.shape[1]
        hs = c.dim // c.heads
        inv = 1.0 / c.rope_theta**(
            torch.arange(0, hs, 2, device=ids.device).float() / hs)
        ang = torch.outer(torch.arange(t, device=ids.device).float(), inv)
        cos, sin = ang.cos(), ang.sin()
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, cos, sin, attn)
        # Tied output embedding, as Llama-3.2-1B.
        return self.norm(x) @ self.embed.weight.t()


def sequence_logps(logits, ids, prompt_len):
    """Summed log-probs of the response tokens (TRL's get_batch_logps)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros_like(tok)
    mask[:, prompt_len - 1:] = 1.0
    return (tok * mask).sum(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--micro-pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--response", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="d 64, 2 layers, V 256 (with small --prompt, "
                    "--response, --pairs: a dry run)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--attn", choices=["sdpa", "math"], default="sdpa")
    ap.add_argument("--pure-bf16", action="store_true")
    args = ap.parse_args()

    if args.pairs % args.micro_pairs:
        ap.error("--micro-pairs must divide --pairs")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIPPED: no GPU (torch.cuda.is_available() is False)")
        return 0
    dev = torch.device(args.device)
    cuda = args.device == "cuda"
    torch.manual_seed(0)
    c = TinyConfig() if args.tiny else Config()
    model = Llama(c).to(dev)
    if args.pure_bf16:
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-7, betas=(0.9, 0.95),
                            weight_decay=0.0)
    seq = args.prompt + args.response
    # Rows 0..P-1 chosen, P..2P-1 rejected; a pair shares its prompt.
    prompt = torch.randint(0, c.vocab, (args.pairs, args.prompt), device=dev)
    responses = torch.randint(0, c.vocab, (2 * args.pairs, args.response),
                              device=dev)
    ids = torch.cat([prompt.repeat(2, 1), responses], dim=1)
    # Micro-batch m: its chosen rows, then its rejected rows.
    mp = args.micro_pairs
    micro = [torch.cat([ids[m:m + mp], ids[args.pairs + m:args.pairs + m + mp]])
             for m in range(0, args.pairs, mp)]
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16):
        ref = [sequence_logps(model(x, args.attn), x, args.prompt)
               for x in micro]

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for x, r in zip(micro, ref):
            with torch.autocast(args.device, dtype=torch.bfloat16):
                logits = model(x, args.attn)
            logps = sequence_logps(logits, x, args.prompt)
            u = args.beta * ((logps[:mp] - r[:mp]) - (logps[mp:] - r[mp:]))
            # The mean over the global batch's pairs.
            loss = -F.logsigmoid(u).sum() / args.pairs
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return total

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = (time.perf_counter() - start) / args.steps
    tokens = 2 * args.pairs * seq
    params = sum(p.numel() for p in model.parameters())
    # gpu_dpo_step_bench.cc's model FLOPs (see there): the layers' projections
    # and causal attention on every token, the output layer on the response.
    hd = c.dim // c.heads
    layer_params = (c.dim * (c.heads + 2 * c.kv_heads) * hd + c.dim * c.dim +
                    3 * c.dim * c.ff)
    per_seq = (6 * seq * c.layers * layer_params +
               6 * c.layers * seq * seq * c.dim +
               6 * args.response * c.dim * c.vocab)
    flops = 2 * args.pairs * per_seq
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "params": params,
        "precision": "bf16 weights" if args.pure_bf16 else
                     "fp32 weights + bf16 autocast",
        "attention": args.attn,
        "pairs": args.pairs,
        "micro_pairs": mp,
        "prompt": args.prompt,
        "response": args.response,
        "tokens_per_step": tokens,
        "step_s": round(elapsed, 4),
        "tokens_per_s": round(tokens / elapsed, 1),
        "model_flops_per_step": float("%.4e" % flops),
        "mfu": round(flops / elapsed / (args.peak_tflops * 1e12), 4),
        # 6 N flops per token for the dense weights plus the causal
        # attention's 6 * 2 * T * d / 2 per token per layer (forward and
        # backward).
        "tflops_per_s": round(flops / elapsed / 1e12, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
                        if cuda else None,
        "loss": round(float(loss), 5),
    }
    if not math.isfinite(result["loss"]):
        print("torch_dpo_step: non-finite loss", file=sys.stderr)
        return 1
    print("torch_dpo_step: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
