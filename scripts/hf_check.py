#!/usr/bin/env python3
"""Loads a demix checkpoint with Hugging Face transformers and compares logits.

usage: hf_check.py CHECKPOINT_DIR EXPECTED_DIR
EXPECTED_DIR holds ids.json ({"ids": [[...]], "text": str, "text_ids": [...]})
and logits.safetensors ({"logits": float32 [B, T, V]}) written by demix.
Prints a JSON summary; exits non-zero on any mismatch.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen3ForCausalLM


def main() -> int:
    ck, exp = sys.argv[1], sys.argv[2]
    model, info = Qwen3ForCausalLM.from_pretrained(
        ck, dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    e = json.load(open(f"{exp}/ids.json"))
    ref = load_file(f"{exp}/logits.safetensors")["logits"]
    with torch.no_grad():
        out = model(torch.tensor(e["ids"])).logits.float()
    diff = (out - ref).abs().max().item()
    tok = AutoTokenizer.from_pretrained(ck)
    ids = tok(e["text"], add_special_tokens=False)["input_ids"]
    decoded = tok.decode(e["text_ids"])
    # A vacuous comparison (all-zero logits) must not pass.
    ok = ref.abs().max().item() > 0.1 and diff < 1e-4 and ids == e["text_ids"] and decoded == e["text"] and not problems
    print(json.dumps({
        "ok": ok,
        "max_abs_logit_diff": diff,
        "loading_problems": {k: list(map(str, v)) for k, v in problems.items()},
        "tokenizer_ids_equal": ids == e["text_ids"],
        "tokenizer_decode_equal": decoded == e["text"],
        "hf_eos": tok.eos_token,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
