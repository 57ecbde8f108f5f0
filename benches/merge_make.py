#!/usr/bin/env python3
"""Makes Qwen3-shaped Hugging Face checkpoints for benches/merge.sh (numpy only).

Usage: merge_make.py OUT_DIR K [--preset 0.6b|tiny] [--dtype bf16|f32]
Writes OUT_DIR/m0 .. OUT_DIR/m{K-1} and OUT_DIR/base, each with config.json
(model_type qwen3, Qwen3ForCausalLM) and one model.safetensors. A model that is
already there with the right size is kept, so reruns are cheap. Models are
base + independent noise, so task-vector methods have something to work on.
Also: merge_make.py --compare A B  prints the max abs difference of two
checkpoints' tensors (both read as float32), for checking merge outputs agree;
merge_make.py --membw [GiB]  prints a numpy copy bandwidth in GB/s (read + write);
merge_make.py --mmapbw FILE  prints the first-touch read rate of a fresh map of FILE.
"""
import json
import os
import struct
import sys

import numpy as np

PRESETS = {
    # Qwen/Qwen3-0.6B: 596M parameters, 1.19 GB in bf16 (tied embeddings).
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 vocab_size=151936),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 vocab_size=8192),
}


def config(p, dtype):
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": min(151643, p["vocab_size"] - 2),
        "eos_token_id": min(151645, p["vocab_size"] - 1), "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 40960,
        "max_window_layers": p["num_hidden_layers"], "rms_norm_eps": 1e-6,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
        "tie_word_embeddings": True, "use_cache": True, "use_sliding_window": False,
        "torch_dtype": {"bf16": "bfloat16", "f32": "float32"}[dtype],
        "transformers_version": "4.51.0", **p,
    }


def shapes(p):
    h, i, hd = p["hidden_size"], p["intermediate_size"], p["head_dim"]
    q, kv = p["num_attention_heads"] * hd, p["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": [p["vocab_size"], h], "model.norm.weight": [h]}
    for l in range(p["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        out.update({
            pre + "input_layernorm.weight": [h],
            pre + "post_attention_layernorm.weight": [h],
            pre + "self_attn.q_proj.weight": [q, h],
            pre + "self_attn.k_proj.weight": [kv, h],
            pre + "self_attn.v_proj.weight": [kv, h],
            pre + "self_attn.o_proj.weight": [h, q],
            pre + "self_attn.q_norm.weight": [hd],
            pre + "self_attn.k_norm.weight": [hd],
            pre + "mlp.gate_proj.weight": [i, h],
            pre + "mlp.up_proj.weight": [i, h],
            pre + "mlp.down_proj.weight": [h, i],
        })
    return dict(sorted(out.items()))


def to_bf16(x):
    """float32 -> bfloat16 bits, round to nearest even (as torch does)."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def header(sh, dtype):
    size = {"bf16": 2, "f32": 4}[dtype]
    st = {"bf16": "BF16", "f32": "F32"}[dtype]
    meta, off = {"__metadata__": {"format": "pt"}}, 0
    for name, s in sh.items():
        n = int(np.prod(s)) * size
        meta[name] = {"dtype": st, "shape": s, "data_offsets": [off, off + n]}
        off += n
    js = json.dumps(meta, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js, off


def write_model(d, p, dtype, seed, base_seed):
    sh = shapes(p)
    head, data = header(sh, dtype)
    f = os.path.join(d, "model.safetensors")
    os.makedirs(d, exist_ok=True)
    cfg = json.dumps(config(p, dtype), indent=2)
    if os.path.exists(f) and os.path.getsize(f) == len(head) + data:
        with open(os.path.join(d, "config.json"), "w") as c:
            c.write(cfg)
        return False
    rng_b = np.random.default_rng(base_seed)
    rng = np.random.default_rng(seed) if seed is not None else None
    with open(f + ".tmp", "wb") as out:
        out.write(head)
        for name, s in sh.items():
            n = int(np.prod(s))
            if len(s) == 1:  # norms: around 1
                x = 1.0 + 0.1 * rng_b.standard_normal(n, dtype=np.float32)
            else:
                x = 0.02 * rng_b.standard_normal(n, dtype=np.float32)
            if rng is not None:  # fine-tuned component: base + task vector
                x += 0.002 * rng.standard_normal(n, dtype=np.float32)
            out.write((to_bf16(x) if dtype == "bf16" else x).tobytes())
    os.replace(f + ".tmp", f)
    with open(os.path.join(d, "config.json"), "w") as c:
        c.write(cfg)
    return True


def load(path):
    """name -> float32 array of a single-file or sharded checkpoint dir."""
    files = sorted(x for x in os.listdir(path) if x.endswith(".safetensors"))
    out = {}
    for fn in files:
        with open(os.path.join(path, fn), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(n))
            buf = np.memmap(os.path.join(path, fn), dtype=np.uint8, mode="r", offset=8 + n)
        for name, t in meta.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            raw = buf[a:b]
            if t["dtype"] == "BF16":
                v = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif t["dtype"] == "F32":
                v = raw.view(np.float32)
            elif t["dtype"] == "F16":
                v = raw.view(np.float16).astype(np.float32)
            else:
                raise SystemExit(f"{name}: dtype {t['dtype']}")
            out[name] = (t["dtype"], t["shape"], v)
    return out


def compare(a, b):
    x, y = load(a), load(b)
    if set(x) != set(y):
        raise SystemExit(f"tensor names differ: {sorted(set(x) ^ set(y))[:5]}")
    worst, name, unequal, total = 0.0, None, 0, 0
    for k in x:
        if x[k][1] != y[k][1]:
            raise SystemExit(f"{k}: shape {x[k][1]} vs {y[k][1]}")
        d = np.abs(x[k][2] - y[k][2])
        m = float(d.max()) if d.size else 0.0
        unequal += int(np.count_nonzero(d))
        total += d.size
        if m > worst:
            worst, name = m, k
    dt = {x[k][0] for k in x} | {y[k][0] for k in y}
    print(f"tensors={len(x)} dtypes={sorted(dt)} max_abs_diff={worst:.3g} "
          f"(in {name}) elements_differing={unequal}/{total} ({100 * unequal / max(total, 1):.4f}%)")


def membw(gib=1.0, reps=5):
    """Best-of-`reps` numpy copy of a `gib` GiB float32 array, in GB/s counting
    bytes read plus bytes written (the STREAM 'copy' convention)."""
    import time
    n = int(gib * (1 << 30)) // 4
    a = np.ones(n, np.float32)
    b = np.zeros(n, np.float32)
    np.copyto(b, a)
    best = min(_t(lambda: np.copyto(b, a), time) for _ in range(reps))
    print(f"{2 * n * 4 / best / 1e9:.2f}")


def mmapbw(path, reps=3):
    """Best-of-`reps` copy out of a fresh read-only map of `path` (in the page cache)
    into a buffer touched beforehand: the page-fault-bound rate at which a merge that
    maps its inputs can first read them, in GB/s of file bytes."""
    import time
    n = os.path.getsize(path)
    b = np.ones(n, np.uint8)
    best = None
    for _ in range(reps):
        m = np.memmap(path, dtype=np.uint8, mode="r")
        t = _t(lambda: np.copyto(b, m), time)
        best = t if best is None else min(best, t)
        del m
    print(f"{n / best / 1e9:.2f}")


def _t(f, time):
    s = time.perf_counter(); f(); return time.perf_counter() - s


def main():
    args = sys.argv[1:]
    if args and args[0] == "--compare":
        return compare(args[1], args[2])
    if args and args[0] == "--mmapbw":
        return mmapbw(args[1])
    if args and args[0] == "--membw":
        return membw(float(args[1]) if len(args) > 1 else 1.0)
    preset, dtype = "0.6b", "bf16"
    if "--preset" in args:
        i = args.index("--preset"); preset = args[i + 1]; del args[i:i + 2]
    if "--dtype" in args:
        i = args.index("--dtype"); dtype = args[i + 1]; del args[i:i + 2]
    out, k = args[0], int(args[1])
    p = PRESETS[preset]
    made = [write_model(os.path.join(out, "base"), p, dtype, None, 1000)]
    for j in range(k):
        made.append(write_model(os.path.join(out, f"m{j}"), p, dtype, j, 1000))
    nparams = sum(int(np.prod(s)) for s in shapes(p).values())
    print(f"{k} components + base, {nparams / 1e6:.0f}M parameters each, {dtype}; "
          f"written {sum(made)}, kept {len(made) - sum(made)}")


if __name__ == "__main__":
    main()
