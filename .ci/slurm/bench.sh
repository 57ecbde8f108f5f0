#!/usr/bin/env bash
# Measures the Slurm executor's overheads on the one-node cluster of .ci/slurm.sh:
# N tiny steps (default 50) as one job per step, as one job array, and batched.
#   .ci/slurm/bench.sh [N]      (needs the cluster up: eval "$(.ci/slurm.sh up)")
# Uses target/release/demix if it exists, else target/debug/demix.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-50}
EXE=$ROOT/target/release/demix
[[ -x $EXE ]] || EXE=$ROOT/target/debug/demix
export SLURM_CONF=${SLURM_CONF:-${DEMIX_SLURM_DIR:-/tmp/demix-slurm}/etc/slurm.conf}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"
items=$(seq -s, 1 "$N" | sed 's/,/, /g')
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
quiet() { while squeue -h -t PD,R,CG 2>/dev/null | grep -q .; do sleep 0.2; done; }

one() { # label executor-block demix-args...
  local label=$1 block=$2; shift 2
  rm -rf cache
  cat >demix.yaml <<YAML
version: 1
name: bench
executor: $block
steps:
  - id: t
    kind: command
    foreach: [$items]
    outputs: {o: o.txt}
    run: [sh, -c, 'echo "\$0" > "\$1"', "\${item}", "\${outputs.o}"]
YAML
  quiet
  local t0; t0=$(date +%s%N)
  "$EXE" run -q "$@" >/dev/null
  local t; t=$(ms "$t0")
  printf '%-44s %6d ms  %5.1f steps/s\n' "$label" "$t" "$(echo "$N * 1000 / $t" | bc -l)"
}

echo "$N tiny steps, $(sinfo -h -o '%c CPUs' | head -1) advertised, $EXE"
# latency: one trivial step, submit to result
rm -rf cache; cat >demix.yaml <<'YAML'
version: 1
name: lat
steps:
  - {id: s, kind: command, outputs: {o: o.txt}, run: [sh, -c, 'date +%s%N > "$0"', "${outputs.o}"]}
YAML
quiet; t0=$(date +%s%N); "$EXE" run -q --executor slurm >/dev/null; t=$(ms "$t0")
started=$(cat cache/trees/*/*/o.txt)
echo "one step: in its job after $(( (started - t0) / 1000000 )) ms, result seen after $t ms"
t0=$(date +%s%N); for i in $(seq 10); do sbatch --parsable -o /dev/null --wrap true >/dev/null; done
echo "sbatch call: $(( $(ms "$t0") / 10 )) ms"
one "one job per step (array: false)" "{type: slurm, array: false}" -j "$N"
one "one job array, one step per task" "{type: slurm}" -j "$N"
one "array, batch: 10 (5 tasks of 10)" "{type: slurm, batch: 10}" -j "$N"
one "array, batch: 25 (2 tasks of 25)" "{type: slurm, batch: 25}" -j "$N"
one "local executor (for scale)" "{type: local}"
