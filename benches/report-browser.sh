#!/usr/bin/env bash
# The report in a real browser: runs a small DeMix workflow (tiny models on
# the shipped corpora, CPU, a few minutes), renders its report in headless
# Chromium at 1000 px and checks it (benches/report-browser.mjs): no
# page-level horizontal overflow, every plot drawn, nothing fetched; saves
# screenshots to look at.
#
#   benches/report-browser.sh [WORKDIR]     (default target/report-browser)
#
# Needs target/debug/demix and demix-worker (cargo build -p demix; cargo
# build -p demix-worker), node and npm; installs Chromium (apt, as root) and
# playwright-core (npm, into WORKDIR) when missing. Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(realpath -m "${1:-$root/target/report-browser}")
demix=${DEMIX:-$root/target/debug/demix}
[ -x "$demix" ] || { echo "no $demix: cargo build -p demix" >&2; exit 2; }
mkdir -p "$work/run" "$work/shots"

if ! command -v "${CHROMIUM:-chromium}" >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "Chromium missing: apt-get install chromium" >&2; exit 2; }
  apt-get install -y chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
fi
export CHROMIUM=$(command -v "${CHROMIUM:-chromium}")
if [ ! -d "$work/node_modules/playwright-core" ]; then
  (cd "$work" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --no-audit --no-fund playwright-core >/dev/null)
fi

data=$root/data
cat > "$work/run/demix.yaml" <<YAML
version: 1
name: report-browser
params:
  candidates: [chat, math, python, spanish]
  seeds: 2
datasets:
  sotu: {files: $data/sotu/train.jsonl, validation: $data/sotu/validation.jsonl}
  chat: {files: $data/chat/train.jsonl, validation: $data/chat/validation.jsonl}
  math: {files: $data/math/train.jsonl, validation: $data/math/validation.jsonl}
  python: {files: $data/python/train.jsonl, validation: $data/python/validation.jsonl}
  spanish: {files: $data/spanish/train.jsonl, validation: $data/spanish/validation.jsonl}
steps:
  - id: tokenizer
    kind: tokenizer
    datasets: [sotu, chat, math, python, spanish]
    vocab_size: 512
    max_bytes: 300000
  - id: base
    kind: train
    tokenizer: \${steps.tokenizer.tokenizer}
    model: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2}
    data: {sotu: 1}
    tokens: 8192
    batch_size: 4
    seq_len: 32
    lr: 0.003
    device: cpu
    threads: 1
  - id: component
    kind: train
    foreach: \${params.candidates}
    init: \${steps.base.checkpoint}
    data: {candidate: "\${item}", general: sotu, beta: 0.5}
    tokens: 4096
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: search
    kind: search
    components: \${steps.component[*].checkpoint}
    candidates: \${params.candidates}
    targets: [sotu, chat, math, python, spanish]
    rounds: [12, 6, 6]
    top_k: 4
    pool: 400
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: final
    kind: train
    foreach: {range: "\${params.seeds}"}
    seed: \${item}
    init: \${steps.base.checkpoint}
    mixture: \${steps.search.mixture}
    datasets: \${params.candidates}
    tokens: 4096
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: uniform
    kind: train
    foreach: {range: "\${params.seeds}"}
    seed: \${item}
    init: \${steps.base.checkpoint}
    data: {chat: 1, math: 1, python: 1, spanish: 1}
    tokens: 4096
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: eval
    kind: evaluate
    matrix: {model: [final, uniform], seed: {range: "\${params.seeds}"}}
    checkpoint: \${steps.\$item.model[\$item.seed].checkpoint}
    datasets: [sotu, chat, math, python, spanish]
    tasks:
      math_qa: $data/tasks/math_qa.jsonl
      python_cloze: $data/tasks/python_cloze.jsonl
      chat_cloze: $data/tasks/chat_cloze.jsonl
    max_tokens: 1024
    seq_len: 32
    max_examples: 20
    max_new_tokens: 4
    device: cpu
    threads: 1
  - id: report
    kind: report
    title: Report in a browser
    search: \${steps.search.result}
    candidates: \${params.candidates}
    tokenizer: \${steps.tokenizer.sample}
    training:
      base: \${steps.base.metrics}
      component[math]: \${steps.component[math].metrics}
      chosen: \${steps.final[0].metrics}
      uniform: \${steps.uniform[0].metrics}
    evaluations:
      chosen: \${steps.eval[final-*].metrics}
      uniform: \${steps.eval[uniform-*].metrics}
    verdict: {chosen: chosen, against: [uniform]}
    mixtures:
      chosen: \${steps.search.mixture}
YAML

cd "$work/run"
# The report is rendered afresh, so a rebuilt demix shows its changes.
"$demix" run -q --force report demix.yaml
html=$("$demix" report --json demix.yaml | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).reports[0].html))')
case $html in /*) ;; *) html=$work/run/$html ;; esac
# Run from WORKDIR, where node finds playwright-core.
cp "$root/benches/report-browser.mjs" "$work/"
cd "$work"
node "$work/report-browser.mjs" "$html" "$work/shots"
