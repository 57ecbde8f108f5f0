#!/usr/bin/env bash
# Proves the one-node cluster of .ci/slurm.sh behaves as .ci/slurm/README.md
# says. Run as root:  .ci/slurm/verify.sh   (about 3 min; SKIP_SIGNAL=1: ~1 min)
# Starts the cluster, runs the checks, stops it again. Every wait is bounded.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SL=$HERE/../slurm.sh
DIR=${DEMIX_SLURM_DIR:-/tmp/demix-slurm}
export SLURM_CONF=$DIR/etc/slurm.conf
W=$DIR/verify; rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
fails=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
st() { squeue -h -t all -j "$1" -o '%T' 2>/dev/null; }
# wait_state ID REGEX SECONDS
wait_state() {
  local end=$(( $(date +%s) + $3 )) s
  while (( $(date +%s) < end )); do
    s=$(st "$1"); [[ $s =~ ^($2)$ ]] && return 0; sleep 0.1
  done
  echo "  (job $1 is '$(st "$1")', wanted $2)"; return 1
}
sub() { sbatch --parsable -o "$W/%j.out" "$@"; }

t0=$(date +%s%N); "$SL" up >/dev/null || { echo "FAIL up"; exit 1; }
echo "up: $(ms "$t0") ms"

# 1. trivial job
t0=$(date +%s%N); j=$(sub --wrap 'echo hello')
wait_state "$j" COMPLETED 10 && grep -q hello "$j.out" && ok "trivial job $j COMPLETED in $(ms "$t0") ms" || bad "trivial job"

# 2. GPU: env var, distinct devices, gating
g='echo "CVD=$CUDA_VISIBLE_DEVICES"; sleep 4'
a=$(sub --gres=gpu:1 --wrap "$g"); b=$(sub --gres=gpu:1 --wrap "$g"); c=$(sub --gres=gpu:1 --wrap "$g")
wait_state "$a" RUNNING 5; wait_state "$b" RUNNING 5; sleep 0.5
sc=$(squeue -h -j "$c" -o '%T %r')
[[ $sc == "PENDING Resources" || $sc == "PENDING Priority" ]] && ok "3rd gpu job pending: '$sc'" || bad "gpu gating: '$sc'"
for x in $a $b $c; do wait_state "$x" COMPLETED 20 >/dev/null; done
va=$(cat "$a.out"); vb=$(cat "$b.out"); vc=$(cat "$c.out")
[[ $va =~ ^CVD=[01]$ && $vb =~ ^CVD=[01]$ && $va != "$vb" && $vc =~ ^CVD=[01]$ ]] \
  && ok "gpu jobs saw $va / $vb / $vc" || bad "gpu env: '$va' '$vb' '$vc'"

# 3. exit 3 -> FAILED 3:0 in scontrol and jobcomp
j=$(sub --wrap 'exit 3'); wait_state "$j" FAILED 10
e=$(scontrol -o show job "$j" | grep -o 'JobState=[A-Z]* .*ExitCode=[0-9:]*' | sed 's/ .* / /')
f=$(grep "^JobId=$j " "$DIR/jobcomp.txt" | grep -o 'JobState=[A-Z]*\| ExitCode=[0-9:]*' | tr -d ' ' | tr '\n' ' ')
[[ $e == "JobState=FAILED ExitCode=3:0" && $f == "JobState=FAILED ExitCode=3:0 " ]] \
  && ok "exit 3: scontrol '$e', jobcomp '$f'" || bad "exit 3: '$e' / '$f'"

# 4. scancel
j=$(sub --wrap 'sleep 60'); wait_state "$j" RUNNING 5; scancel "$j"
wait_state "$j" CANCELLED 10 && ok "scancel -> CANCELLED ($(scontrol -o show job "$j" | grep -o 'ExitCode=[0-9:]*'))" || bad scancel

# 5. requeue a running job: PENDING (reason BeginTime) for cred_expire
#    (10 s here), then reruns by itself with SLURM_RESTART_COUNT=1
j=$(sub --open-mode=append --wrap 'echo "run restart=${SLURM_RESTART_COUNT:-0} $(date +%s)"; sleep 2')
wait_state "$j" RUNNING 5; t0=$(date +%s%N); scontrol requeue "$j"
wait_state "$j" PENDING 5; r=$(squeue -h -j "$j" -o '%r')
wait_state "$j" RUNNING 30 && rq=$(ms "$t0") && wait_state "$j" COMPLETED 15 && grep -q 'restart=1' "$j.out" \
  && ok "requeue: pending reason '$r', running again after ${rq} ms, $(scontrol -o show job "$j" | grep -o 'Restarts=[0-9]*')" \
  || bad "requeue ($(cat "$j.out"))"

# 6. preemption: a job in partition 'urgent' requeues a 'debug' job
p1=$(sub --wrap 'sleep 30'); p2=$(sub --wrap 'sleep 30')
wait_state "$p1" RUNNING 5; wait_state "$p2" RUNNING 5
u=$(sub -p urgent --wrap 'sleep 1')
wait_state "$u" COMPLETED 10
pre=$(grep -E "^JobId=($p1|$p2) .*JobState=PREEMPTED" "$DIR/jobcomp.txt" | grep -o '^JobId=[0-9]*')
[[ -n $pre ]] && ok "preemption: $pre logged PREEMPTED, now '$(squeue -h -j "${pre#JobId=}" -o '%T %r')'" || bad preemption
scancel "$p1" "$p2"; wait_state "$p1" CANCELLED 10 >/dev/null; wait_state "$p2" CANCELLED 10 >/dev/null

# 7. two --cpus-per-task=1 --mem jobs side by side
a=$(sub --cpus-per-task=1 --mem=2G --wrap 'sleep 3'); b=$(sub --cpus-per-task=1 --mem=2G --wrap 'sleep 3')
wait_state "$a" RUNNING 5 && wait_state "$b" RUNNING 5 && ok "two 1-cpu 2G jobs running together" || bad "side by side"
wait_state "$a" COMPLETED 10 >/dev/null; wait_state "$b" COMPLETED 10 >/dev/null

# 8. latency and throughput
t0=$(date +%s%N); ids=(); for i in $(seq 20); do ids+=("$(sub -o /dev/null --wrap true)"); done
sb=$(( $(ms "$t0") / 20 )); L=$(IFS=,; echo "${ids[*]}")
end=$(( $(date +%s) + 60 ))
while [[ $(squeue -h -t all -j "$L" -o %T | grep -c COMPLETED) != 20 ]] && (( $(date +%s) < end )); do sleep 0.1; done
tt=$(ms "$t0")
t1=$(date +%s%N); for i in $(seq 20); do squeue -h -t all -j "$L" -o '%i %T %r' >/dev/null; done; sq=$(( $(ms "$t1") / 20 ))
t1=$(date +%s%N); for i in $(seq 20); do scontrol -o show job "${ids[0]}" >/dev/null; done; sc=$(( $(ms "$t1") / 20 ))
ok "sbatch ${sb} ms, squeue(20 ids) ${sq} ms, scontrol show job ${sc} ms; 20 trivial jobs in ${tt} ms"

# 9. pre-timeout signal and TIMEOUT (about 90 s)
if [[ ${SKIP_SIGNAL:-0} != 1 ]]; then
  cat >sig.sh <<'EOF'
#!/bin/bash
s=$(date +%s)
for sig in USR1 TERM; do trap "echo got $sig at +\$(( \$(date +%s) - s ))s" $sig; done
while true; do sleep 1 & wait $!; done
EOF
  chmod +x sig.sh
  printf '#!/bin/bash\nexec %s/sig.sh\n' "$W" >exec.sh
  s1=$(sub --time=00:01:00 --signal=B:USR1@30 sig.sh)
  s2=$(sub --time=00:01:00 --signal=B:USR1@30 exec.sh)
  wait_state "$s1" TIMEOUT 150; wait_state "$s2" TIMEOUT 30
  o1=$(grep got "$s1.out" | tr '\n' ' '); o2=$(grep got "$s2.out" | tr '\n' ' ')
  [[ $o1 == *"got USR1"* && $o2 == *"got USR1"* ]] \
    && ok "--signal=B:USR1@30 --time=1: '$o1' / via exec: '$o2'; $(scontrol -o show job "$s1" | grep -o 'JobState=[A-Z]*\| ExitCode=[0-9:]*' | tr '\n' ' ')" \
    || bad "signal: '$o1' '$o2'"
fi

# 10. json
squeue --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("squeue --json jobs:", len(d["jobs"]))' && ok "squeue --json" || bad "squeue --json"

# 11. down / up / down
t0=$(date +%s%N); "$SL" down 2>/dev/null; d1=$(ms "$t0")
t0=$(date +%s%N); "$SL" up >/dev/null 2>&1 && u2=$(ms "$t0") && "$SL" up >/dev/null 2>&1 \
  && j=$(sub --wrap true) && wait_state "$j" COMPLETED 10 && ok "down ${d1} ms, up again ${u2} ms, up twice ok, job runs" || bad "re-up"
"$SL" down 2>/dev/null
left=$(ps -eo comm | grep -cE '^(slurmctld|slurmd|slurmstepd|munged)$')
[[ $left == 0 ]] && ok "no daemons left" || bad "$left daemons left"
echo "failures: $fails"; exit $(( fails > 0 ))
