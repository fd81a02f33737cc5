#!/usr/bin/env python3
"""How fast does the demo's decoder shape learn in-context lookup? (docs/demo_notes.md, session 8)

Multi-query associative recall (MQAR) on a Qwen2-style decoder of the demo's size (width 128, 4 query heads,
2 KV heads, SwiGLU 384, RMSNorm, rotary, tied embeddings, init std 1/sqrt(width) as make-tiny-models uses),
in plain PyTorch so the result does not depend on idamoe's code. A sequence is 6 key-value pairs of 21 words,
a separator, then the same keys in shuffled order, each followed by its value; the loss and the accuracy are on
the values only. Guessing one of the six values in the context scores ~17%; lookup scores ~100%.

    /usr/bin/python3 docs/experiments/mqar_probe.py LR STEPS [LAYERS [MIMETIC]]

MIMETIC in (0, 1] starts each query head's W_q as MIMETIC * (its KV group's W_k) + sqrt(1 - MIMETIC^2) * (its
random W_q), so that q.k is partly a similarity of the two tokens at init (mimetic initialization,
Trockman & Kolter 2023, arXiv 2305.09828).

Measured on the 2-core machine (Debian torch 1.13, batch 32, warm-up 30 steps then cosine, clip 1.0), held-out
accuracy: 4 layers, 1000 steps: 29.5% (lr 2e-3), 29% (5e-3), 32% (5e-4); 2 layers, lr 2e-3: 42.7% after 1000
steps, 46% after 3000 (185 s); 4 layers, lr 2e-3, MIMETIC 0.7: 36% after 500 steps, 91% after 1000.
"""
import math
import sys
import time

import torch

N_WORDS, PAIRS, BATCH = 21, 6, 32
SEP, VOCAB = N_WORDS, N_WORDS + 1
D, HEADS, KV_HEADS, FFN = 128, 4, 2, 384


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope_tables(T, d):
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    f = torch.arange(T).float()[:, None] * inv
    e = torch.cat([f, f], -1)
    return e.cos(), e.sin()


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        hd = D // HEADS
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.q, self.k, self.v = torch.nn.Linear(D, D), torch.nn.Linear(D, KV_HEADS * hd), torch.nn.Linear(D, KV_HEADS * hd)
        self.o = torch.nn.Linear(D, D, bias=False)
        self.gate, self.up, self.down = (torch.nn.Linear(D, FFN, bias=False), torch.nn.Linear(D, FFN, bias=False),
                                         torch.nn.Linear(FFN, D, bias=False))

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        hd, rep = D // HEADS, HEADS // KV_HEADS
        h = self.n1(x)
        q = rope(self.q(h).view(B, T, HEADS, hd).transpose(1, 2), cos, sin)
        k = rope(self.k(h).view(B, T, KV_HEADS, hd).transpose(1, 2), cos, sin).repeat_interleave(rep, 1)
        v = self.v(h).view(B, T, KV_HEADS, hd).transpose(1, 2).repeat_interleave(rep, 1)
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).masked_fill(mask, -1e9).softmax(-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(B, T, D))
        h = self.n2(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


class Decoder(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.layers = torch.nn.ModuleList([Layer() for _ in range(layers)])
        self.norm = RMSNorm(D)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=1 / math.sqrt(D))
            elif not name.endswith("weight"):  # biases
                torch.nn.init.zeros_(p)

    def forward(self, x):
        T = x.shape[1]
        cos, sin = rope_tables(T, D // HEADS)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.norm(h) @ self.embed.weight.t()  # tied LM head


def batch(B):
    keys = torch.rand(B, N_WORDS).argsort(1)[:, :PAIRS]
    vals = torch.randint(0, N_WORDS, (B, PAIRS))
    perm = torch.rand(B, PAIRS).argsort(1)
    context = torch.stack([keys, vals], 2).reshape(B, 2 * PAIRS)
    queries = torch.stack([keys.gather(1, perm), vals.gather(1, perm)], 2).reshape(B, 2 * PAIRS)
    x = torch.cat([context, torch.full((B, 1), SEP), queries], 1)
    query_pos = torch.arange(2 * PAIRS + 1, 4 * PAIRS + 1, 2)  # each query key; its value comes next
    return x, query_pos


def mimetic(model, mix):
    hd, rep = D // HEADS, HEADS // KV_HEADS
    with torch.no_grad():
        for layer in model.layers:
            for h in range(HEADS):
                g = h // rep
                layer.q.weight[h * hd:(h + 1) * hd] = (mix * layer.k.weight[g * hd:(g + 1) * hd] +
                                                       math.sqrt(1 - mix * mix) * layer.q.weight[h * hd:(h + 1) * hd])


def main():
    lr, steps = float(sys.argv[1]), int(sys.argv[2])
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = Decoder(layers)
    if len(sys.argv) > 4:
        mimetic(model, float(sys.argv[4]))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, pos = batch(BATCH)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, pos].reshape(-1, VOCAB), x[:, pos + 1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                x, pos = batch(500)
                acc = (model(x[:, :-1])[:, pos].argmax(-1) == x[:, pos + 1]).float().mean().item()
            print(f"layers {layers} lr {lr} step {step} loss {loss.item():.3f} held-out value accuracy {acc:.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
