#!/usr/bin/env bash
# Engine benchmark, side by side with DVC and b3sum on this machine:
#  - a no-op `demix run` on a 100-step pipeline with 10 GiB of inputs (target < 100 ms),
#  - the same pipeline as dvc.yaml under `dvc repro` (first run, no-op) and `dvc status`,
#  - first-time hashing throughput of a 2 GiB file: demix against b3sum.
# The pipeline follows ../shared/design/peers.md: s000-s029 each read one of ten 1 GiB
# files (each file used by 3 stages) and write a small output; s030-s099 are cp chains.
# Usage: benches/engine.sh [WORKDIR]   (default /tmp/demix-bench; needs ~13 GiB free)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/demix-bench}"
reps="${REPS:-5}"
mkdir -p "$work"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/demix/bench-venv"
if [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "dvc==3.67.1"
fi
command -v b3sum >/dev/null || { apt-get update -qq && apt-get install -y -qq b3sum >/dev/null; }
cargo build --quiet --release --manifest-path "$root/Cargo.toml"
demix="$root/target/release/demix"

# Inputs: ten 1 GiB files of random bytes, made once.
mkdir -p "$work/inputs"
for i in $(seq 0 9); do
  f="$work/inputs/big$i.bin"
  [ -f "$f" ] && [ "$(stat -c %s "$f")" = 1073741824 ] || head -c 1G /dev/urandom > "$f"
done

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
times() { local n=$1; shift; for _ in $(seq "$n"); do timeit "$@"; done | median; }

# The demix pipeline.
d="$work/demix"; rm -rf "$d"; mkdir -p "$d"; ln -s "$work/inputs" "$d/inputs"
{
  echo "version: 1"; echo "name: bench"; echo "steps:"
  for i in $(seq 0 29); do
    printf '  - id: s%03d\n    kind: command\n    inputs: {big: inputs/big%d.bin}\n    outputs: {o: o.txt}\n    run: [sh, -c, %s, sh, "${inputs.big}", "${outputs.o}"]\n' \
      "$i" "$((i % 10))" "'head -c 64 \"\$1\" | od -An -tx1 > \"\$2\"'"
  done
  for i in $(seq 30 99); do
    printf '  - id: s%03d\n    kind: command\n    inputs: {prev: "${steps.s%03d.o}"}\n    outputs: {o: o.txt}\n    run: [cp, "${inputs.prev}", "${outputs.o}"]\n' "$i" "$(( i < 60 ? i - 30 : i - 30 ))"
  done
} > "$d/demix.yaml"
# The same as dvc.yaml.
v="$work/dvc"; rm -rf "$v"; mkdir -p "$v"; ln -s "$work/inputs" "$v/inputs"
{
  echo "stages:"
  for i in $(seq 0 29); do
    printf '  s%03d:\n    cmd: head -c 64 inputs/big%d.bin | od -An -tx1 > out/s%03d.txt\n    deps: [inputs/big%d.bin]\n    outs: [out/s%03d.txt]\n' "$i" "$((i % 10))" "$i" "$((i % 10))" "$i"
  done
  for i in $(seq 30 99); do
    p=$(( i - 30 ))
    printf '  s%03d:\n    cmd: cp out/s%03d.txt out/s%03d.txt\n    deps: [out/s%03d.txt]\n    outs: [out/s%03d.txt]\n' "$i" "$p" "$i" "$p" "$i"
  done
} > "$v/dvc.yaml"
mkdir -p "$v/out"
(cd "$v" && "$venv/bin/dvc" init --no-scm -q)

sync; cat "$work"/inputs/*.bin > /dev/null   # inputs cached, as in peers.md
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
first_demix=$(cd "$d" && timeit "$demix" run -q -j 2)
noop_demix=$(cd "$d" && times "$reps" "$demix" run -q)
status_demix=$(cd "$d" && times "$reps" "$demix" status)
first_dvc=$(cd "$v" && timeit "$venv/bin/dvc" repro -q)
noop_dvc=$(cd "$v" && times "$reps" "$venv/bin/dvc" repro -q)
status_dvc=$(cd "$v" && times "$reps" "$venv/bin/dvc" status -q)

# First-time hashing of a 2 GiB file, cached in the page cache.
h="$work/hash"; rm -rf "$h"; mkdir -p "$h"
cat "$work/inputs/big0.bin" "$work/inputs/big1.bin" > "$h/two.bin"
printf 'version: 1\nname: hash\nsteps:\n  - {id: h, kind: command, inputs: {f: two.bin}, run: [true]}\n' > "$h/demix.yaml"
hash_demix=$(for _ in $(seq 3); do rm -rf "$h/cache"; (cd "$h" && timeit "$demix" status); done | median)
hash_b3=$(times 3 b3sum "$h/two.bin")
rm -f "$h/two.bin"

printf '| measurement | demix | DVC 3.67.1 | ratio |\n|---|---|---|---|\n'
printf '| first run, 100 steps, 10 GiB inputs | %ss | %ss | %.1fx |\n' "$first_demix" "$first_dvc" "$(echo "$first_dvc / $first_demix" | bc -l)"
printf '| no-op run | %ss | %ss | %.0fx |\n' "$noop_demix" "$noop_dvc" "$(echo "$noop_dvc / $noop_demix" | bc -l)"
printf '| status | %ss | %ss | %.0fx |\n' "$status_demix" "$status_dvc" "$(echo "$status_dvc / $status_demix" | bc -l)"
printf '\n| hashing a 2 GiB file (first time, cached) | seconds | GB/s |\n|---|---|---|\n'
printf '| demix status (fresh store) | %s | %.2f |\n' "$hash_demix" "$(echo "2.147 / $hash_demix" | bc -l)"
printf '| b3sum 1.x | %s | %.2f |\n' "$hash_b3" "$(echo "2.147 / $hash_b3" | bc -l)"
