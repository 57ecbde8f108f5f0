#!/usr/bin/env python3
"""PyTorch baseline for crates/demix-ml/examples/bench_train.rs: the same
Qwen3 shape (transformers' Qwen3ForCausalLM with SDPA attention, or, where
transformers is not installed, the builtin Qwen3 below), batch, threads and
AdamW. f32 on CPU by default. Run with the cache venv:
$(dirname $LIBTORCH)/../../../bin/python.

usage: train_pytorch.py [--compile] [--builtin] [d_model layers heads vocab seq batch threads steps]

Environment, the same names as bench_train.rs:
  DEMIX_BENCH_DEVICE       cpu (default), cuda or cuda:N
  DEMIX_BENCH_BF16=1       bf16 autocast over f32 master weights (see below)
  DEMIX_BENCH_PEAK_GFLOPS  peak for the MFU (default 157, the 2-core CPU;
                           989000 for an H200's dense bf16, NVIDIA spec sheet)
  DEMIX_BENCH_KV_HEADS, DEMIX_BENCH_HEAD_DIM, DEMIX_BENCH_FFN, DEMIX_BENCH_TIE=1
                           Qwen3 shapes (defaults: heads, d/heads, 3d, untied)
  DEMIX_BENCH_WARMUP       untimed steps first (default 2; torch.compile
                           compiles during the first)
  BENCH_COMPILE=1          as --compile: torch.compile(model)
  BENCH_MODEL=builtin      as --builtin: the builtin Qwen3 even when
                           transformers is there

bf16 against demix: both keep f32 parameters and AdamW state and run the
matmuls in bf16. demix casts each weight to bf16 at use and keeps every
activation (the residual stream included) in bf16, with RMSNorm and the loss in
f32. Here autocast casts weights per matmul the same way, but the embedding
output and the residual stream stay f32 (a bf16 linear output added to an f32
residual is f32), and RMSNorm returns f32; so this side moves somewhat more
bytes per layer. Both use SDPA (flash attention for bf16 on CUDA) and a fused
AdamW (torch.optim.AdamW(fused=True) here, ATen's _fused_adamw_ in demix) with
weight decay on matrices only, and foreach gradient clipping.

Tokens are random (torch.manual_seed(0)); shapes equal bench_train.rs's, the
values differ (it draws from SplitMix64), which does not matter for speed.
"""
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

args = [x for x in sys.argv[1:] if not x.startswith("--")]
flags = {x for x in sys.argv[1:] if x.startswith("--")}
compile_model = "--compile" in flags or os.environ.get("BENCH_COMPILE") == "1"
builtin = "--builtin" in flags or os.environ.get("BENCH_MODEL") == "builtin"

a = [int(x) for x in args]
g = lambda i, d: a[i] if i < len(a) else d
d, layers, heads, vocab = g(0, 256), g(1, 4), g(2, 4), g(3, 4096)
seq, batch, threads, steps = g(4, 256), g(5, 16), g(6, 2), g(7, 8)


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


device = torch.device(os.environ.get("DEMIX_BENCH_DEVICE", "").strip() or "cpu")
bf16 = os.environ.get("DEMIX_BENCH_BF16") == "1"
peak = float(os.environ.get("DEMIX_BENCH_PEAK_GFLOPS", "").strip() or 157.0)
kv = env_int("DEMIX_BENCH_KV_HEADS", heads)
head_dim = env_int("DEMIX_BENCH_HEAD_DIM", d // heads)
ffn = env_int("DEMIX_BENCH_FFN", 3 * d)
tie = os.environ.get("DEMIX_BENCH_TIE") == "1"
warmup = env_int("DEMIX_BENCH_WARMUP", 2)
cuda = device.type == "cuda"
if cuda and not torch.cuda.is_available():
    sys.exit(f"DEMIX_BENCH_DEVICE={device} but torch.cuda.is_available() is False")

torch.set_num_threads(threads)
torch.manual_seed(0)


# A builtin Qwen3 (the architecture of transformers' Qwen3ForCausalLM: RMSNorm,
# RoPE, grouped-query attention with per-head q/k RMSNorm, SwiGLU), for
# machines without transformers. Same parameters and FLOPs.
class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(d, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv * head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, d, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, heads, head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, kv, head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, kv, head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv != heads:
            k = k.repeat_interleave(heads // kv, dim=1)
            v = v.repeat_interleave(heads // kv, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, heads * head_dim))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = RMSNorm(d)
        self.self_attn = Attention()
        self.post_attention_layernorm = RMSNorm(d)
        self.mlp = Mlp()

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3(nn.Module):
    def __init__(self, theta=1e6):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer() for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids):
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device, dtype=torch.float32)
        emb = torch.outer(pos, self.inv_freq)
        emb = torch.cat((emb, emb), dim=-1)
        x = self.embed_tokens(ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


model_name = "builtin Qwen3 (benches/train_pytorch.py)"
hf = None
if not builtin:
    try:
        import transformers
        from transformers import Qwen3Config, Qwen3ForCausalLM

        hf = (Qwen3Config, Qwen3ForCausalLM)
        model_name = f"transformers {transformers.__version__} Qwen3ForCausalLM (sdpa)"
    except ImportError as e:
        print(f"transformers unavailable ({e}); using the builtin Qwen3", file=sys.stderr)

with torch.device(device):
    if hf:
        Qwen3Config, Qwen3ForCausalLM = hf
        cfg = Qwen3Config(vocab_size=vocab, hidden_size=d, intermediate_size=ffn,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, head_dim=head_dim,
                          tie_word_embeddings=tie, max_position_embeddings=max(4096, seq),
                          use_cache=False)
        cfg._attn_implementation = "sdpa"
        model = Qwen3ForCausalLM(cfg)
    else:
        model = Qwen3()
model = model.float().train()
n = sum(p.numel() for p in model.parameters())  # a tied matrix counts once
params = list(model.parameters())
groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
          {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
# Fused on CUDA (one kernel for all tensors, as demix's update); on the CPU the
# default, as in the CPU comparison of docs/benchmarks.md.
opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                        **({"fused": True} if cuda else {}))
fwd = torch.compile(model) if compile_model else model


def logits_of(x):
    out = fwd(x)
    return out.logits if hf else out


def sync():
    if cuda:
        torch.cuda.synchronize(device)


t0 = time.perf_counter()
compile_s = None
for step in range(warmup + steps):
    if step == warmup:
        sync()
        t0 = time.perf_counter()
    ts = time.perf_counter()
    x = torch.randint(0, vocab, (batch, seq + 1)).to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = logits_of(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), x[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
    if step == 0 and compile_model:
        sync()
        compile_s = time.perf_counter() - ts
final_loss = loss.item()  # waits for the last step
sync()
secs = time.perf_counter() - t0
tps = steps * batch * seq / secs
n_mat = n - vocab * d + (vocab * d if tie else 0)  # the lookup is no matmul; a tied lm_head is
attn = 2 * layers * seq * heads * head_dim
flops_tok = 6 * n_mat + 6 * attn
gflops = flops_tok * tps / 1e9
print(json.dumps({
    "impl": "torch.compile" if compile_model else "pytorch eager",
    "model": model_name, "torch": torch.__version__, "device": str(device),
    "compute": "bf16 autocast (f32 master weights)" if bf16 else "f32",
    "shape": {"d_model": d, "layers": layers, "heads": heads, "kv_heads": kv,
              "head_dim": head_dim, "ffn": ffn, "vocab": vocab, "tied": tie},
    "seq": seq, "batch": batch,
    "params": n, "tokens_per_s": tps,
    "gflops_6n": 6 * n * tps / 1e9, "gflops_6n_attn": gflops,
    "peak_gflops": peak, "mfu": gflops / peak,
    "final_loss": final_loss, "seconds": secs, "steps": steps, "warmup": warmup,
    "first_step_s": compile_s,
    "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
}))
