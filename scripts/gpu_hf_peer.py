#!/usr/bin/env python3
"""GPU peer for `idamoe-train bench` (scripts/gpu_check.sh): Hugging Face transformers' own training step.

  gpu_hf_peer.py make  --arch qwen2|stablelm --out DIR   random-init full-size model (HF layout, bf16 safetensors)
  gpu_hf_peer.py bench --model DIR --batch B --seq T --steps N --warmup W
      one JSON line: median step time and tokens/s of HF's model on the same random tokens, bf16 autocast,
      fp32 master weights, torch.optim.AdamW (fused, constant lr 1e-4, no weight decay), as our bench runs.

Needs a python with torch + transformers (the GPU machine's python3). The full-size configurations are
the published ones (docs: ../shared/docs/architectures.md, Qwen2-1.5B and StableLM-2-1.6B tables).
"""
import argparse
import json
import statistics
import sys
import time

CONFIGS = {
    # Qwen/Qwen2-1.5B config.json
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=1536, intermediate_size=8960,
                  num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  hidden_act="silu", bos_token_id=151643, eos_token_id=151643),
    # stabilityai/stablelm-2-1_6b config.json
    "stablelm": dict(architectures=["StableLmForCausalLM"], model_type="stablelm", hidden_size=2048,
                     intermediate_size=5632, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                     vocab_size=100352, max_position_embeddings=4096, rope_theta=10000.0, layer_norm_eps=1e-5,
                     partial_rotary_factor=0.25, use_qkv_bias=True, qk_layernorm=False, use_parallel_residual=False,
                     tie_word_embeddings=False, hidden_act="silu", bos_token_id=100257, eos_token_id=100257),
}


def make(args):
    import torch
    import transformers
    cfg = transformers.AutoConfig.for_model(**CONFIGS[args.arch])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    # The hub's config.json layout (transformers 5 writes rope settings under rope_parameters): what users'
    # downloaded checkpoints carry and what idamoe's hf_config reads.
    with open(args.out + "/config.json", "w") as f:
        json.dump(dict(CONFIGS[args.arch], torch_dtype="bfloat16"), f, indent=2)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"made": args.out, "arch": args.arch, "params": n}))


def bench(args):
    import torch
    import transformers
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                                              attn_implementation="sdpa").cuda()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed)).cuda()
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronises
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"peer": "hf-transformers " + transformers.__version__, "torch": torch.__version__,
                      "model": args.model, "batch": args.batch, "seq": args.seq, "step_s_median": med,
                      "tokens_per_s_median": args.batch * args.seq / med, "loss_first": losses[0],
                      "loss_last": losses[-1], "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--arch", choices=sorted(CONFIGS), required=True)
    m.add_argument("--out", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--batch", type=int, default=4)
    b.add_argument("--seq", type=int, default=1024)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    {"make": make, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
