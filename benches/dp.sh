#!/usr/bin/env bash
# Data-parallel training on CPU: one `train` step on 1 rank of N threads
# against N ranks of 1 thread each (Open MPI), the same global batch, the same
# machine; prints wall time and tokens/s of each and the largest loss
# difference between them. Usage: benches/dp.sh [WORKDIR] (default
# /tmp/demix-dp-bench). Uses target/release/{demix,demix-worker} (built here
# with `--features mpi`). DP_RANKS (default: nproc), DP_STEPS (default 30).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/demix-dp-bench}"
ranks="${DP_RANKS:-$(nproc)}"
steps="${DP_STEPS:-30}"
LIBTORCH="$("$root/scripts/libtorch.sh")"
export LIBTORCH
cargo build --quiet --release --locked -p demix --manifest-path "$root/Cargo.toml"
cargo build --quiet --release --locked -p demix-worker --features mpi --manifest-path "$root/Cargo.toml"
demix="$root/target/release/demix"
rm -rf "$work"; mkdir -p "$work"; cd "$work"

batch=$((16 * ranks)); seq=256
tokens=$((steps * batch * seq))
step() { # id ranks state_every
  cat <<EOF
  - id: $1
    kind: train
    tokenizer: \${steps.tok.tokenizer}
    model: {hidden_size: 256, intermediate_size: 768, num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 4}
    data: {sotu: 1, chat: 1}
    tokens: $tokens
    batch_size: $batch
    micro_batch_size: 16
    seq_len: $seq
    lr: 0.001
    log_every_steps: 1
    state_every_steps: $3
    device: cpu
    resources: {cpus: $ranks, ranks: $2}
EOF
}
{
  cat <<EOF
version: 1
name: dp
datasets:
  sotu: {files: $root/data/sotu/train.jsonl, validation: $root/data/sotu/validation.jsonl}
  chat: {files: $root/data/chat/train.jsonl, validation: $root/data/chat/validation.jsonl}
steps:
  - id: tok
    kind: tokenizer
    datasets: [sotu, chat]
    vocab_size: 4096
    max_bytes: 2000000
EOF
  # Different state_every_steps keep the two keys apart (ranks are not in the key).
  step one 1 1000000
  step many "$ranks" 1000001
} > demix.yaml
"$demix" run --target tok >/dev/null 2>&1
wall() { local s e; s=$(date +%s.%N); "$demix" run --target "$1" -j 1 >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
t1=$(wall one); tn=$(wall many)
metrics() { find cache/trees -path "*/$1/*" -name metrics.jsonl 2>/dev/null | head -1; }
python3 - "$t1" "$tn" "$ranks" "$tokens" <<'PY'
import glob, json, sys
t1, tn, ranks, tokens = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def facts(step):
    rec = json.load(open(f"cache/state/dp/{step}.json"))
    tree = rec["tree"]
    rows = [json.loads(l) for l in open(glob.glob(f"cache/trees/{tree[:2]}/{tree}/metrics.jsonl")[0])]
    summary = None
    for line in open(f"cache/logs/{rec['key']}.log"):
        if line.startswith("summary "):
            summary = json.loads(line[len("summary "):])
    return [r["loss"] for r in rows], summary
l1, s1 = facts("one")
ln, sn = facts("many")
d = max(abs(a - b) / abs(a) for a, b in zip(l1, ln))
print(f"1 rank x {ranks} threads: {t1:.1f} s wall, training {s1['elapsed_s']:.1f} s, {s1['tokens_per_s']:,.0f} tokens/s")
print(f"{ranks} ranks x 1 thread: {tn:.1f} s wall, training {sn['elapsed_s']:.1f} s, {sn['tokens_per_s']:,.0f} tokens/s")
print(f"{tokens:,} tokens each, {len(l1)} steps; largest relative loss difference per step: {d:.1e}")
PY
