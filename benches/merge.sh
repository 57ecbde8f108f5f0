#!/usr/bin/env bash
# Merge benchmark: demix's torch-free `kind: merge` against mergekit (PyPI) on this machine.
#  - K Qwen3-0.6B-shaped bf16 checkpoints (596M parameters, 1.19 GB each; benches/merge_make.py),
#  - a K-way and a 2-way linear merge (weights 1..K), median of REPS runs, page cache warm,
#  - demix three ways: fresh store (hashes every input first), warm store (new weights, input
#    hashes come from the stat cache), and an strace split of one warm run into
#    startup / merge (mmap, merge, write, fsync) / commit (hash and store the output),
#  - peak RSS (/usr/bin/time), a numpy copy bandwidth, and the max difference of the outputs.
# Usage: benches/merge.sh [WORKDIR]   (default /tmp/demix-merge-bench; needs ~14 GiB free disk
# and ~12 GiB of page cache; K, REPS and PRESET=0.6b|tiny override the defaults)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/demix-merge-bench}"
reps="${REPS:-3}"
k="${K:-7}"
preset="${PRESET:-0.6b}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

# mergekit in its own venv; torch 2.11.0 is reused from demix's torch venv through a .pth
# file (that venv is only read), else pip brings its own.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/demix/mergekit-venv"
torch_venv="${XDG_CACHE_HOME:-$HOME/.cache}/demix/torch-2.11.0/venv"
if [ ! -x "$venv/bin/mergekit-yaml" ]; then
  python3 -m venv "$venv"
  site="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  tsite=("$torch_venv"/lib/python3*/site-packages)
  [ -d "${tsite[0]}" ] && echo "${tsite[0]}" > "$site/zz-demix-torch.pth"
  "$venv/bin/pip" install -q "mergekit==0.1.5"
fi
py="$venv/bin/python"
for t in time strace bc; do
  [ -x "/usr/bin/$t" ] || { apt-get update -qq && apt-get install -y -qq "$t" >/dev/null; }
done
CARGO_TARGET_DIR="$root/target/bench" cargo build --quiet --release --manifest-path "$root/Cargo.toml"
demix="$root/target/bench/release/demix"

"$py" "$root/benches/merge_make.py" "$work/models" "$k" --preset "$preset" >&2
size=$(stat -c %s "$work/models/m0/model.safetensors")

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
# run NAME CMD...: wall seconds on stdout; peak RSS (MiB) appended to $work/NAME.rss and
# CPU seconds (user + system, children included) to $work/NAME.cpu.
run() {
  local name=$1; shift; local s e
  s=$(date +%s.%N)
  /usr/bin/time -f '%M %U %S' -o "$work/.rss" "$@" >"$work/$name.out" 2>"$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  e=$(date +%s.%N)
  read -r kb u sy < "$work/.rss"
  echo "$((kb / 1024))" >> "$work/$name.rss"
  echo "$u + $sy" | bc >> "$work/$name.cpu"
  echo "$e - $s" | bc
}
maxrss() { sort -n "$work/$1.rss" | tail -1; }
cpu() { median < "$work/$1.cpu"; }

warm_cache() { cat "$work"/models/*/model.safetensors > /dev/null; }

# bench N: the N-way linear merge of m0..m{N-1}, both tools. Prints one markdown row per tool
# and leaves the two outputs for the comparison.
bench() {
  local n=$1 d="$work/demix-$1" m="$work/mergekit-$1" models="" i
  for i in $(seq 0 $((n - 1))); do models+="${models:+, }$work/models/m$i"; done
  mkdir -p "$d" "$m"
  # manifest M: weights i * M. `linear` normalises them, so every M gives the same bytes
  # (M is a power of two) but a new step key: the merge runs again with input hashes from
  # the stat cache. (`demix run --force merged` now does the same; the weights keep
  # the runs comparable with results measured before that was fixed.)
  manifest() {
    local w="" j
    for j in $(seq 1 "$n"); do w+="${w:+, }$((j * $1))"; done
    printf 'version: 1\nname: merge-bench\nsteps:\n  - id: merged\n    kind: merge\n    models: [%s]\n    weights: [%s]\n    method: linear\n' \
      "$models" "$w" > "$d/demix.yaml"
  }
  manifest 1
  { echo "merge_method: linear"; echo "dtype: bfloat16"; echo "models:"
    for i in $(seq 0 $((n - 1))); do
      printf '  - model: %s\n    parameters: {weight: %d}\n' "$work/models/m$i" $((i + 1))
    done; } > "$m/config.yml"
  rm -f "$work"/*-"$n".rss "$work"/*-"$n".cpu
  local mk=("$venv/bin/mergekit-yaml" "$m/config.yml" "$m/out" --no-copy-tokenizer --no-write-model-card --quiet)
  warm_cache
  # One untimed run of each to warm the page cache and Python's bytecode cache.
  (cd "$d" && rm -rf cache && "$demix" run -q) ; rm -rf "$m/out"; "${mk[@]}" >/dev/null 2>&1
  local cold=() hot=() step=() mkt=() r
  for r in $(seq "$reps"); do
    rm -rf "$d/cache"; manifest 1; cold+=("$(cd "$d" && run "cold-$n" "$demix" run -q)")
    manifest $((1 << r)); hot+=("$(cd "$d" && run "hot-$n" "$demix" run --json)")
    step+=("$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"][0]["duration_s"])' "$work/hot-$n.out")")
    rm -rf "$m/out"; mkt+=("$(run "mergekit-$n" "${mk[@]}")")
  done
  # One warm run under strace: startup, merge (open inputs .. output renamed, fsync included),
  # commit (hash + store the output); fsync alone from its -T duration.
  manifest $((1 << (reps + 1)))
  (cd "$d" && strace -f -s 512 -ttt -T -o "$work/trace-$n" -e trace=openat,fsync,rename,renameat2,exit_group \
    "$demix" run -q)
  read -r t_start t_merge t_fsync t_commit < <(awk -v mf="/m0/model.safetensors" '
    NR == 1 { t0 = $2 } { t = $2 }
    !open && index($0, mf) && /openat/ { open = $2 }
    /fsync\(/ && open && !fs { fs = $NF; gsub(/[<>]/, "", fs) }
    /rename/ && index($0, ".model.safetensors.tmp") { ren = $2 }
    END { printf "%.2f %.2f %.2f %.2f\n", open - t0, ren - open, fs, t - ren }' "$work/trace-$n")
  local tree; tree=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tree"])' "$d/cache/state/merge-bench/merged.json")
  ln -sfn "$d/cache/trees/${tree:0:2}/$tree/checkpoint" "$work/demix-out-$n"
  local gb; gb=$(echo "$n * $size / 1000000000" | bc -l)
  local c h s x; c=$(printf '%s\n' "${cold[@]}" | median); h=$(printf '%s\n' "${hot[@]}" | median)
  s=$(printf '%s\n' "${step[@]}" | median); x=$(printf '%s\n' "${mkt[@]}" | median)
  printf '| %d-way, %.2f GB in | demix, fresh store (hash inputs + merge) | %s | %.2f | %s | %s |\n' "$n" "$gb" "$c" "$(echo "$gb / $c" | bc -l)" "$(cpu "cold-$n")" "$(maxrss "cold-$n")"
  printf '| | demix, warm store (new weights), end to end | %s | %.2f | %s | %s |\n' "$h" "$(echo "$gb / $h" | bc -l)" "$(cpu "hot-$n")" "$(maxrss "hot-$n")"
  printf '| | demix, the step alone (run report `duration_s`) | %s | %.2f | | |\n' "$s" "$(echo "$gb / $s" | bc -l)"
  printf '| | demix, strace split of one warm run: startup %ss, merge %ss (fsync %ss), commit %ss | %s | %.2f | | |\n' \
    "$t_start" "$t_merge" "$t_fsync" "$t_commit" "$t_merge" "$(echo "$gb / $t_merge" | bc -l)"
  printf '| | mergekit 0.1.5, end to end | %s | %.2f | %s | %s |\n' "$x" "$(echo "$gb / $x" | bc -l)" "$(cpu "mergekit-$n")" "$(maxrss "mergekit-$n")"
  printf '| | speed-up (mergekit / demix warm end to end; / merge alone) | %.1fx; %.1fx | | | |\n' \
    "$(echo "$x / $h" | bc -l)" "$(echo "$x / $t_merge" | bc -l)"
  echo "$n $t_merge $gb" >> "$work/merge-times"
}

rm -f "$work/merge-times"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB; $(date -u +%F); demix $(git -C "$root" rev-parse --short HEAD); mergekit $("$py" -c 'import importlib.metadata as m; print(m.version("mergekit"))'), torch $("$py" -c 'import torch; print(torch.__version__)')"
echo "load before: $(uptime | sed 's/.*load average/load average/')"
startup=$( { s=$(date +%s.%N); "$venv/bin/mergekit-yaml" --help >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; } )
bw=$("$py" "$root/benches/merge_make.py" --membw 1)
warm_cache
mbw=$("$py" "$root/benches/merge_make.py" --mmapbw "$work/models/m0/model.safetensors")
printf '\n| merge (bf16, page cache warm) | tool | wall s (median of %d) | GB/s read | CPU s | peak RSS MiB |\n|---|---|---|---|---|---|\n' "$reps"
bench "$k"
bench 2
echo "load after: $(uptime | sed 's/.*load average/load average/')"
echo
echo "memory bandwidth: numpy copy of a 1 GiB float32 array, best of 5: $bw GB/s (read + write bytes)"
while read -r n t gb; do
  floor=$(echo "($gb + $gb / $n) / $bw" | bc -l)   # read n inputs + write one output
  printf '%d-way: bandwidth floor %.2fs (%.1f GB read + %.1f GB written at %s GB/s); demix merge %ss = %.1fx the floor; its input rate %.2f GB/s = %.0f%% of the fresh-map read rate below\n' \
    "$n" "$floor" "$gb" "$(echo "$gb / $n" | bc -l)" "$bw" "$t" "$(echo "$t / $floor" | bc -l)" \
    "$(echo "$gb / $t" | bc -l)" "$(echo "100 * $gb / $t / $mbw" | bc -l)"
done < "$work/merge-times"
echo "first read of a fresh map of one cached input (numpy copy out of np.memmap, best of 3): $mbw GB/s"
echo "mergekit-yaml --help (Python + torch + transformers import): ${startup}s"
for n in "$k" 2; do
  echo "outputs, $n-way: $("$py" "$root/benches/merge_make.py" --compare "$work/demix-out-$n" "$work/mergekit-$n/out")"
done
