#!/usr/bin/env bash
# Merge-search throughput: merged proxies evaluated per minute by the `search`
# step of workflows/demix-tiny.yaml (4 components, 112 proxies, 5 targets x 4096
# validation tokens each), with one worker or two, merging from the files or from
# components held in memory (`resident`), and the RegMix baseline's trained
# proxies for comparison. Figures come from each search.json's `cost`.
# Usage: benches/search.sh [WORKDIR]   (default /tmp/demix-search-bench)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/demix-search-bench}"
LIBTORCH="$("$root/scripts/libtorch.sh")"
export LIBTORCH
cargo build --quiet --release --locked -p demix --manifest-path "$root/Cargo.toml"
cargo build --quiet --release --locked -p demix-worker --manifest-path "$root/Cargo.toml"
demix="$root/target/release/demix"
mkdir -p "$work/workflows"
ln -sfn "$root/data" "$work/data"
cd "$work"

# variant NAME FIELDS...: demix-tiny with the search step's extra fields.
variant() {
  local name=$1; shift
  local extra=""
  for f in "$@"; do extra+="    $f\n"; done
  sed -e "s|^    pool: 20000$|    pool: 20000\n${extra%\\n}|" "$root/workflows/demix-tiny.yaml" \
    > "workflows/$name.yaml"
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F); demix $(git -C "$root" rev-parse --short HEAD)"
echo "load before: $(uptime | sed 's/.*load average/load average/')"
variant base
"$demix" run -q workflows/base.yaml -t component
printf '\n| search | proxies | evaluating s | proxies/min | validation tokens |\n|---|---|---|---|---|\n'
report() {
  python3 - "$1" "$2" <<'EOF'
import json, sys, glob
name, path = sys.argv[1], sys.argv[2]
c = json.load(open(path))["cost"]
print(f"| {name} | {c['proxies_evaluated']} | {c['evaluate_seconds']:.1f} | "
      f"{c['proxies_evaluated'] * 60 / c['evaluate_seconds']:.1f} | {c['tokens_evaluated']} |")
EOF
}
result() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["tree"], r["outputs"]["result"]["path"])' \
    "cache/state/demix-tiny/$1.json" | { read -r tree path; echo "cache/trees/${tree:0:2}/$tree/$path"; }
}
for v in "merged, 1 worker x 2 threads|workers: 1|threads: 2" \
         "merged, 2 workers x 1 thread|workers: 2|threads: 1" \
         "merged, 2 workers x 1 thread, resident|workers: 2|threads: 1|resident: true"; do
  IFS='|' read -r label a b c <<< "$v"
  name=$(echo "$label" | tr -c 'a-z0-9' '-')
  # `threads` is already a field of the search step: replace it rather than repeat it.
  variant "$name" "$a" ${c:+"$c"}
  sed -i "/^  - id: search$/,/^  - id: final$/ s|^    threads: .*|    $b|" "workflows/$name.yaml"
  "$demix" run -q "workflows/$name.yaml" -t search --force search
  report "$label" "$(result search)"
done
echo "load after: $(uptime | sed 's/.*load average/load average/')"
