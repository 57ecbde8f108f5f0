#!/usr/bin/env python3
"""PyTorch eager baseline for examples/bench_train.rs: the same Qwen3 shape
(transformers' Qwen3ForCausalLM, SDPA attention), batch, threads and AdamW,
f32 on CPU. Run with the cache venv: $(dirname $LIBTORCH)/../../../bin/python.

usage: bench_train.py [d_model layers heads vocab seq batch threads steps]
"""
import json
import sys
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

PEAK_GFLOPS = 157.0  # 2-core peer machine, shared/design/peers.md

a = [int(x) for x in sys.argv[1:]]
g = lambda i, d: a[i] if i < len(a) else d
d, layers, heads, vocab = g(0, 256), g(1, 4), g(2, 4), g(3, 4096)
seq, batch, threads, steps = g(4, 256), g(5, 16), g(6, 2), g(7, 8)
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=vocab, hidden_size=d, intermediate_size=3 * d,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=heads, head_dim=d // heads,
                  tie_word_embeddings=False, max_position_embeddings=4096)
cfg._attn_implementation = "sdpa"
model = Qwen3ForCausalLM(cfg).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
n = sum(p.numel() for p in model.parameters())
warmup = 2
for step in range(warmup + steps):
    if step == warmup:
        t0 = time.perf_counter()
    x = torch.randint(0, vocab, (batch, seq + 1))
    logits = model(x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
secs = time.perf_counter() - t0
tps = steps * batch * seq / secs
n_mat = n - vocab * d  # embedding lookup is not a matmul
attn = 2 * layers * seq * heads * (d // heads)
flops_tok = 6 * n_mat + 6 * attn
print(json.dumps({"impl": "pytorch eager", "params": n, "tokens_per_s": tps,
                  "gflops_6n": 6 * n * tps / 1e9, "gflops_6n_attn": flops_tok * tps / 1e9,
                  "mfu_vs_157_gflops": flops_tok * tps / 1e9 / PEAK_GFLOPS,
                  "seconds": secs, "steps": steps}))
