#!/usr/bin/env python3
"""An evaluator outside demix: scores a Hugging Face checkpoint with
transformers and writes demix's metrics format (docs/metrics.md), so that a
`report`, `validate` or `search` step reads its numbers as it reads an
`evaluate` step's.

usage: hf_eval.py CHECKPOINT OUT.json NAME=VALIDATION.jsonl [NAME=...]
       [--max-tokens N] [--seq-len N]

Each dataset is scored on windows of --seq-len tokens spread evenly over the
whole split (not its first documents), documents joined with the tokenizer's
end-of-text token as demix joins them. Needs torch and transformers.
"""
import argparse
import json
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def score(model, tok, path, max_tokens, seq_len):
    docs = [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]
    sep = tok.eos_token_id
    stream, owner = [], []
    for i, d in enumerate(docs):
        ids = tok(d, add_special_tokens=False)["input_ids"]
        stream += ([sep] if sep is not None else []) + ids
        owner += [i] * (len(ids) + (sep is not None))
    row = seq_len + 1
    n_windows = max(1, len(stream) // row)
    want = max(1, min(n_windows, max_tokens // seq_len))
    # One window from each of `want` equal stretches of the stream.
    starts = [(k * n_windows // want) * row for k in range(want)]
    nll, tokens, scored = 0.0, 0, []
    with torch.no_grad():
        for s in starts:
            ids = torch.tensor([stream[s : s + row]])
            logits = model(ids[:, :-1]).logits.float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])
            nll -= lp.sum().item()
            tokens += ids.shape[1] - 1
            scored.append(ids[0, 1:].tolist())
    text_bytes = sum(len(tok.decode(w, skip_special_tokens=True).encode("utf-8")) for w in scored)
    loss = nll / max(tokens, 1)
    documents = len({owner[s + j] for s in starts for j in range(1, row) if s + j < len(owner)})
    return {
        "tokens": tokens,
        "documents": documents,
        "bytes": text_bytes,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nll / math.log(2) / max(text_bytes, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("datasets", nargs="+", help="NAME=VALIDATION.jsonl")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    a = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32).eval()
    datasets = {}
    for spec in a.datasets:
        name, path = spec.split("=", 1)
        datasets[name] = score(model, tok, path, a.max_tokens, a.seq_len)
    losses = [d["loss"] for d in datasets.values()]
    out = {
        "format": "demix-metrics-v1",
        "checkpoint": a.checkpoint,
        "evaluator": "workflows/scripts/hf_eval.py (transformers)",
        "datasets": datasets,
        "tasks": {},
        "mean_loss": sum(losses) / len(losses),
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
