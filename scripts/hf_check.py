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
    # bos/eos come from the tokenizer: config.json and generation_config.json
    # say its end-of-text token, and greedy `generate` stops once it comes
    # (the output layer is made to predict it: a model with random weights
    # would otherwise run to max_new_tokens).
    eos = e.get("eos")
    gc = model.generation_config
    ids_ok = eos is None or (
        model.config.eos_token_id == eos and model.config.bos_token_id == eos
        and gc.eos_token_id == eos and gc.bos_token_id == eos and gc.pad_token_id == eos
        and tok.eos_token_id == eos
    )
    stops = None
    if eos is not None:
        def only_eos(_module, _inputs, out):
            return torch.zeros_like(out).index_fill_(-1, torch.tensor([eos]), 1.0)
        hook = model.lm_head.register_forward_hook(only_eos)
        prompt = torch.tensor([e["ids"][0][:5]])
        with torch.no_grad():
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8)
        hook.remove()
        stops = gen.shape[1] == prompt.shape[1] + 1 and gen[0, -1].item() == eos
    # A vacuous comparison (all-zero logits) must not pass.
    ok = ref.abs().max().item() > 0.1 and diff < 1e-4 and ids == e["text_ids"] and decoded == e["text"] and not problems and ids_ok and stops is not False
    print(json.dumps({
        "ok": ok,
        "max_abs_logit_diff": diff,
        "loading_problems": {k: list(map(str, v)) for k, v in problems.items()},
        "tokenizer_ids_equal": ids == e["text_ids"],
        "tokenizer_decode_equal": decoded == e["text"],
        "hf_eos": tok.eos_token,
        "special_ids_ok": ids_ok,
        "generate_stops_at_eos": stops,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
