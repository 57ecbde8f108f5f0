#!/usr/bin/env bash
# What the engine costs per step, and that it does not load libtorch:
#  - `demix --version`: wall time and peak RSS,
#  - a 200-step pipeline of `cp` command steps (a chain of 20 fans of 10; an
#    `env` per step keeps their keys apart):
#    first run, no-op run, `status` (wall time; RSS of status).
# Usage: benches/steps.sh [WORKDIR]   (default /tmp/demix-steps-bench)
# Uses target/release/demix (built here if missing or stale).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/demix-steps-bench}"
reps="${REPS:-5}"
# DEMIX_BIN measures another build (e.g. an older, libtorch-linked one).
if [ -z "${DEMIX_BIN:-}" ]; then
  cargo build --quiet --release --locked -p demix --manifest-path "$root/Cargo.toml"
fi
demix="${DEMIX_BIN:-$root/target/release/demix}"
rm -rf "$work"; mkdir -p "$work"; cd "$work"

echo seed > seed.txt
{
  echo "version: 1"; echo "name: steps"; echo "steps:"
  prev="seed.txt"
  for c in $(seq 0 19); do
    for f in $(seq 0 9); do
      printf '  - id: c%02d_%d\n    kind: command\n    inputs: {i: \"%s\"}\n    outputs: {o: o.txt}\n    env: {STEP: c%02d_%d}\n    run: [cp, "${inputs.i}", "${outputs.o}"]\n' \
        "$c" "$f" "$prev" "$c" "$f"
    done
    prev="\${steps.c$(printf %02d "$c")_0.o}"
  done
} > demix.yaml

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
wall() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
rss_mb() { /usr/bin/time -o rss.txt -f %M "$@" >/dev/null 2>&1; awk '{printf "%.1f", $1/1024}' rss.txt; }

version=$(for _ in $(seq "$reps"); do wall "$demix" --version; done | median)
version_rss=$(rss_mb "$demix" --version)
first=$( { for _ in $(seq 3); do rm -rf cache; wall "$demix" run -j 2; done; } | median)
noop=$(for _ in $(seq "$reps"); do wall "$demix" run -j 2; done | median)
status=$(for _ in $(seq "$reps"); do wall "$demix" status; done | median)
status_rss=$(rss_mb "$demix" status)
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F)"
echo "demix --version: ${version} s, ${version_rss} MB peak RSS"
echo "200 cp steps: first run ${first} s (median of 3), no-op ${noop} s, status ${status} s (${status_rss} MB), medians of ${reps}"
if ldd "$demix" | grep -q libtorch; then
  echo "this demix links libtorch"
else
  echo "this demix links no libtorch"
fi
