#!/usr/bin/env bash
# GPU check: demix's ML path on one CUDA GPU, with binaries built elsewhere.
#
#   benches/gpu.sh [OUTDIR]
#
# Checks, each printing PASS/FAIL with its numbers (exit status 1 if any fails):
#   a. bf16 training on CUDA (benches/gpu/check.yaml, step `base`): the loss falls.
#   b. resume: the same step in a second store, SIGINT once a resume state
#      exists, rerun; it resumes (resumed_from_step > 0, metrics continue) and
#      ends close to the uninterrupted run of check a.
#   c. merges on the GPU: a `search` with `resident: true` over three
#      components; search.json holds every proxy, scored.
#   d. training throughput and MFU, Qwen3 shapes of about 125M and 0.6B
#      parameters: demix (crates/demix-ml/examples/bench_train.rs), PyTorch
#      eager and torch.compile (benches/train_pytorch.py), bf16.
#
# Budget on one H200: 8 minutes in all (the parts' caps below; torch.compile,
# last, gets what is left). Nothing is built here: it runs
# ${DEMIX_BIN_DIR:-target/release}/{demix,demix-worker,examples/bench_train}
# against this machine's own PyTorch (libtorch 2.11, as the worker was built
# with): LD_LIBRARY_PATH gets $TORCH/lib and $TORCH/../nvidia/*/lib, since the
# binaries' runpath names the build machine's cache.
#
# Environment:
#   DEMIX_GPU_SH_DEVICE  cuda (default) | cpu: the CPU path, tiny shapes,
#                        `device: cpu`, f32, to exercise this script anywhere
#   DEMIX_BIN_DIR        where the binaries are (default target/release)
#   DEMIX_GPU_SH_PYTHON  python with torch (default python3; for cpu, the
#                        demix libtorch cache venv's python when there is one)
#   DEMIX_TORCH_DIR      torch's package folder (default: asked of that python)
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${DEMIX_GPU_SH_DEVICE:-cuda}"
case "$MODE" in
  cuda | cpu) ;;
  *) echo "DEMIX_GPU_SH_DEVICE=$MODE: cuda or cpu" >&2; exit 2 ;;
esac
OUT="${1:-$ROOT/target/gpu-check-$MODE-$(date -u +%Y%m%dT%H%M%SZ)}"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "$OUT exists and is not empty: give a new or empty OUTDIR" >&2
  exit 2
fi
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
exec > >(tee "$OUT/gpu-check.log") 2>&1

# ---------------------------------------------------------------- settings
if [ "$MODE" = cuda ]; then
  # Of the 480 s allowed: 30 s kept for what timeouts cannot cut short (a
  # cancelled step saving its state, `timeout -k`'s grace) and the summary.
  TOTAL=450
  CAP_SETUP=30 CAP_A=50 CAP_B=60 CAP_C=60
  CAP_DEMIX_S=40 CAP_DEMIX_L=50 CAP_EAGER_S=40 CAP_EAGER_L=50
  CAP_COMPILE_S=150 # the 0.6B compile row keeps at least MIN_COMPILE_L
  MIN_COMPILE_L=120
  # H200 dense BF16 Tensor Core peak: 989 TFLOPS (NVIDIA's H200 spec sheet
  # lists 1,979 TFLOPS with 2:4 sparsity; dense is half).
  PEAK=989000
  BENCH_THREADS=8 BENCH_WARMUP=3 BF16=1 PRECISION=bf16
  # name d layers heads vocab seq batch steps kv head_dim tied
  SHAPE_S=(125M 768 12 12 32768 2048 8 20 4 64 0)   # 133M: GPT-2-small-like, Qwen3 blocks
  SHAPE_L=(0.6B 1024 28 16 151936 2048 8 10 8 128 1) # Qwen3-0.6B's shape (596M, tied)
  MANIFEST_PARAMS=() # benches/gpu/check.yaml as written
else
  TOTAL=3600
  CAP_SETUP=60 CAP_A=400 CAP_B=600 CAP_C=900
  CAP_DEMIX_S=120 CAP_DEMIX_L=120 CAP_EAGER_S=120 CAP_EAGER_L=120
  CAP_COMPILE_S=400
  MIN_COMPILE_L=300
  PEAK=157 # f32 FMA peak of the 2-core build machine (docs/benchmarks.md)
  BENCH_THREADS=1 BENCH_WARMUP=2 BF16=0 PRECISION=f32
  # The same knobs as on the GPU (GQA, head_dim != d/heads, tied), tiny.
  SHAPE_S=(125M-tiny 64 2 4 512 64 4 5 2 16 0)
  SHAPE_L=(0.6B-tiny 64 2 4 1024 64 4 5 2 32 1)
  # One thread: the build machine's 2 cores are shared, and 2 OpenMP threads
  # on a busy machine train 10x slower than one.
  MANIFEST_PARAMS=(device=cpu precision=f32 threads=1 hidden=64 intermediate=192
    layers=2 heads=4 kv_heads=2 batch=8 seq=64 base_tokens=102400
    component_tokens=25600 state_every=10 "rounds=[8, 4]" eval_tokens=2048)
fi

BIN="${DEMIX_BIN_DIR:-$ROOT/target/release}"
DEMIX="$BIN/demix"
WORKER="$BIN/demix-worker"
BENCH="$BIN/examples/bench_train"
[ -x "$BENCH" ] || [ ! -x "$BIN/bench_train" ] || BENCH="$BIN/bench_train"

# ---------------------------------------------------------------- helpers
now() { echo "${EPOCHREALTIME/,/.}"; }
T_START=$(now)
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# Seconds of the whole budget left (integer, at least 1).
global_left() { awk -v a="$T_START" -v b="$(now)" -v t="$TOTAL" 'BEGIN { l = int(t - (b - a)); print (l < 1 ? 1 : l) }'; }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

RESULTS="$OUT/results.tsv"
: >"$RESULTS"
PART="" PART_T0="" PART_CAP=0
# part ID CAP TITLE: starts a part; its commands get at most CAP seconds in
# all, and never more than the whole budget has left.
part() {
  PART="$1" PART_T0=$(now) PART_CAP=$(min "$2" "$(global_left)")
  echo
  echo "== $1. $3 (budget ${PART_CAP} s; $(since "$T_START") s elapsed in all)"
}
# Seconds the current part has left (at least 1).
left() {
  awk -v a="$PART_T0" -v b="$(now)" -v c="$PART_CAP" -v g="$(global_left)" \
    'BEGIN { l = int(c - (b - a)); if (g < l) l = g; print (l < 1 ? 1 : l) }'
}
endpart() { echo "-- $PART: $(since "$PART_T0") s of ${PART_CAP} s"; }
# result ID PASS|FAIL|WARN|SKIP MESSAGE
result() {
  printf '%s %s: %s\n' "$2" "$1" "$3"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$(since "$PART_T0")" "$3" >>"$RESULTS"
}
# t SECS CMD...: CMD with a time limit (SIGINT first, so demix cancels cleanly).
t() {
  local s="$1"
  shift
  timeout -s INT -k 15 "$s" "$@"
}
# py ARGS... <<'EOF': a python script on stdin (the standard library only).
py() { "$PY" - "$@"; }

# ---------------------------------------------------------------- 0. setup
part 0 "$CAP_SETUP" "set-up: binaries, this machine's PyTorch, demix-worker doctor"
echo "mode $MODE; out $OUT; bin $BIN; started $(date -u +%FT%TZ) on $(hostname)"
SETUP_OK=1
for b in "$DEMIX" "$WORKER"; do
  [ -x "$b" ] || { echo "missing $b (build it on the build machine, then copy it here; DEMIX_BIN_DIR points elsewhere)"; SETUP_OK=0; }
done
if [ -n "${DEMIX_GPU_SH_PYTHON:-}" ]; then
  PY="$DEMIX_GPU_SH_PYTHON"
elif [ "$MODE" = cpu ]; then
  lt="${LIBTORCH:-$(cat /tmp/libtorch.path 2>/dev/null || true)}"
  PY=python3
  [ -n "$lt" ] && [ -x "$lt/../../../../bin/python" ] && PY="$(cd "$lt/../../../../bin" && pwd)/python"
else
  PY=python3
fi
echo "python: $PY"
TORCH="${DEMIX_TORCH_DIR:-$("$PY" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)}"
if [ -z "$TORCH" ] || [ ! -d "$TORCH/lib" ]; then
  echo "no PyTorch: '$PY -c \"import torch\"' failed and DEMIX_TORCH_DIR is not set"
  SETUP_OK=0
else
  TORCH="$(cd "$TORCH" && pwd)"
  TV=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null)
  echo "torch: $TORCH ($TV)"
  case "$TV" in 2.11.*) ;; *) echo "warning: the worker was built against libtorch 2.11.0; this is $TV" ;; esac
  LIBS="$TORCH/lib"
  for d in "$TORCH"/../nvidia/*/lib; do [ -d "$d" ] && LIBS="$LIBS:$(cd "$d" && pwd)"; done
  export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi
export DEMIX_WORKER="$WORKER"
if [ "$SETUP_OK" = 1 ]; then
  missing=$(ldd "$WORKER" | grep 'not found')
  if [ -n "$missing" ]; then
    echo "demix-worker's libraries do not all resolve:"
    echo "$missing"
    SETUP_OK=0
  fi
  ldd "$WORKER" | grep -E 'libtorch|libc10|libcudart|libnccl|libcudnn|libcublas\.' | sed 's/^/  /'
fi
if [ "$SETUP_OK" = 1 ]; then
  DOCTOR=$(t "$(left)" "$WORKER" doctor 2>&1)
  echo "$DOCTOR" | sed 's/^/  /'
  if [ "$MODE" = cuda ] && ! echo "$DOCTOR" | grep -Eq '^cuda: +true'; then
    echo "demix-worker doctor does not report CUDA available (the driver, the LD_LIBRARY_PATH above, or a CPU-only torch);"
    echo "DEMIX_GPU_SH_DEVICE=cpu runs the CPU path instead"
    SETUP_OK=0
  fi
  if [ "$MODE" = cuda ]; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | sed 's/^/  nvidia-smi: /'
    t "$(left)" "$PY" -c 'import torch; print("  torch sees", torch.cuda.device_count(), "GPU(s):", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
  fi
fi
if [ "$SETUP_OK" = 1 ]; then
  result 0 PASS "binaries, torch $TV, doctor ok ($MODE)"
else
  result 0 FAIL "set-up failed (see above); nothing else can run"
  endpart
  echo
  echo "FAILED: set-up. Log: $OUT/gpu-check.log"
  exit 1
fi
endpart

# The manifest, with its data paths made absolute (and the CPU path's params).
MANIFEST="$OUT/check.yaml"
sed "s#\.\./\.\./data/#$ROOT/data/#g" "$ROOT/benches/gpu/check.yaml" >"$MANIFEST"
for kv in "${MANIFEST_PARAMS[@]}"; do
  k="${kv%%=*}" v="${kv#*=}"
  sed -i -E "s#^(  $k: ).*#\\1$v#" "$MANIFEST"
done
STORE_A="$OUT/store-a" STORE_B="$OUT/store-b"
# demix ARGS... in store $STORE with a time limit; output to $OUT/LOGNAME.
demix_run() {
  local store="$1" secs="$2" logname="$3"
  shift 3
  DEMIX_CACHE="$store" NO_COLOR=1 t "$secs" "$DEMIX" "$@" >"$OUT/$logname" 2>&1
  local rc=$?
  sed 's/^/  | /' "$OUT/$logname" >&2
  return $rc
}

# Facts about a finished train step in a store, as JSON: metrics, the log's
# summary, the record's params.
step_facts() {
  py "$1" "$2" <<'EOF'
import json, math, os, sys
store, step = sys.argv[1], sys.argv[2]
rec = json.load(open(os.path.join(store, "state", "gpu-check", step + ".json")))
tree = rec["tree"]
base = os.path.join(store, "trees", tree[:2], tree)
out = {"params": rec["record"]["params"], "dir": base}
if "metrics" in rec["outputs"]:
    path = os.path.join(base, rec["outputs"]["metrics"]["path"])
    out["metrics_path"] = path
    out["metrics"] = [json.loads(l) for l in open(path) if l.strip()]
log = os.path.join(store, "logs", rec["key"] + ".log")
summaries = [json.loads(l.split(" ", 1)[1]) for l in open(log) if l.startswith("summary ")] if os.path.exists(log) else []
out["summary"] = summaries[-1] if summaries else None
out["log"] = log
print(json.dumps(out))
EOF
}

# ---------------------------------------------------------------- a. bf16 training
part a "$CAP_A" "training with $PRECISION compute on $MODE (tokenizer + step base)"
if demix_run "$STORE_A" "$(left)" a-run.log run "$MANIFEST" --target base; then
  step_facts "$STORE_A" base >"$OUT/a-facts.json"
  py "$OUT/a-facts.json" "$MODE" "$PRECISION" <<'EOF'
import json, math, sys
f = json.load(open(sys.argv[1])); mode, prec = sys.argv[2], sys.argv[3]
m = f["metrics"]; p = f["params"]; s = f["summary"] or {}
# The record writes `device: cuda` as cuda:0.
same_device = lambda d, mode: str(d).split(":")[0] == mode
losses = [x["loss"] for x in m]
first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
want_steps = -(-p["tokens"] // (p["batch_size"] * p["seq_len"]))
ok = (all(math.isfinite(l) for l in losses) and len(losses) == want_steps
      and last <= 0.85 * first and same_device(p["device"], mode) and p["precision"] == prec)
print("PASS" if ok else "FAIL",
      f"{len(losses)}/{want_steps} steps, device {p['device']}, precision {p['precision']}: "
      f"loss {first:.3f} (mean of first 10) -> {last:.3f} (last 10), final {losses[-1]:.4f}; "
      f"{s.get('tokens_per_s', float('nan')):,.0f} tokens/s, {s.get('params', 0):,} params "
      f"(pass: last 10 <= 0.85 x first 10)")
EOF
else
  echo "FAIL demix run failed or ran out of time (rc $?)"
fi >"$OUT/a-result.txt"
read -r st msg < <(tail -n 1 "$OUT/a-result.txt")
result a "${st:-FAIL}" "${msg:-no output}"
endpart

# ---------------------------------------------------------------- b. resume
part b "$CAP_B" "interrupt and resume (step base again, in a second store)"
b_check() {
  local cap
  cap=$(left)
  DEMIX_CACHE="$STORE_B" NO_COLOR=1 "$DEMIX" run "$MANIFEST" --target base >"$OUT/b-run1.log" 2>&1 &
  local pid=$!
  local t0
  t0=$(now)
  # As tests/cli/harness.rs interrupt_when: wait for a saved state, then SIGINT.
  until compgen -G "$STORE_B/resume/*/state" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      sed 's/^/  | /' "$OUT/b-run1.log" >&2
      echo "FAIL the first run ended before any resume state appeared"
      return
    fi
    if [ "$(awk -v a="$t0" -v b="$(now)" -v c="$cap" 'BEGIN { print (b - a > c - 5) }')" = 1 ]; then
      kill -INT "$pid"
      wait "$pid"
      echo "FAIL no resume state within the budget"
      return
    fi
    sleep 0.05
  done
  kill -INT "$pid"
  wait "$pid"
  local rc=$?
  sed 's/^/  | /' "$OUT/b-run1.log" >&2
  local state
  state=$(compgen -G "$STORE_B/resume/*/state" | head -1)
  local at
  at=$(py "$state/state.json" <<<'import json, sys; print(json.load(open(sys.argv[1]))["step"])' 2>/dev/null)
  echo "interrupted: exit $rc, resume state at step ${at:-?} ($(since "$t0") s after start)" >&2
  if [ "$rc" != 130 ]; then
    echo "FAIL the interrupted run exited $rc, not 130 (did it finish before the SIGINT?)"
    return
  fi
  if [ -e "$STORE_B/state/gpu-check/base.json" ]; then
    echo "FAIL the interrupted step has a result record"
    return
  fi
  if ! demix_run "$STORE_B" "$(left)" b-run2.log run "$MANIFEST" --target base; then
    echo "FAIL the rerun failed or ran out of time"
    return
  fi
  step_facts "$STORE_B" base >"$OUT/b-facts.json"
  py "$OUT/a-facts.json" "$OUT/b-facts.json" "$MODE" "$at" <<'EOF'
import json, math, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
mode, at = sys.argv[3], sys.argv[4]
s = b["summary"] or {}
resumed = s.get("resumed_from_step", 0)
la = {x["step"]: x["loss"] for x in a["metrics"]}
lb = [x["loss"] for x in b["metrics"]]
steps_b = [x["step"] for x in b["metrics"]]
n = len(la)
continuous = steps_b == list(range(1, n + 1))
same_bytes = open(a["metrics_path"], "rb").read() == open(b["metrics_path"], "rb").read()
ck = lambda f: open(f["dir"] + "/checkpoint/model.safetensors", "rb").read()
same_ckpt = ck(a) == ck(b)
rel = lambda x, y: abs(x - y) / max(abs(y), 1e-12)
fa, fb = la[n], lb[-1]
last_a = sum(la[i] for i in range(n - 9, n + 1)) / 10
last_b = sum(lb[-10:]) / 10
after = [rel(lb[k - 1], la[k]) for k in range(resumed + 1, min(resumed + 6, n + 1))] if continuous else []
msg = (f"resumed_from_step {resumed} (state saved at {at}), steps 1..{n} continuous: {continuous}; "
       f"final loss {fb:.4f} vs uninterrupted {fa:.4f} (rel {rel(fb, fa):.2e}), "
       f"last-10 mean rel {rel(last_b, last_a):.2e}, first 5 resumed steps max rel "
       f"{max(after) if after else float('nan'):.2e}; metrics bytes equal: {same_bytes}, "
       f"checkpoint bytes equal: {same_ckpt}")
if mode == "cpu":
    # f32 on the CPU is deterministic: a resumed run is byte-identical (docs/kinds.md).
    ok = resumed > 0 and continuous and same_bytes and same_ckpt
    msg += " (pass: byte-identical, as on CPU)"
else:
    # bf16 on CUDA is not bit-exact run to run (atomics in SDPA's backward and
    # in reductions): tolerate 1% on the 5 steps after the resume point and 2%
    # on the mean of the last 10 losses.
    ok = (resumed > 0 and continuous and after and max(after) <= 0.01
          and rel(last_b, last_a) <= 0.02)
    msg += " (pass: <= 1% on the 5 steps after resuming, <= 2% on the last-10 mean)"
print("PASS" if ok else "FAIL", msg)
EOF
}
b_check >"$OUT/b-result.txt"
read -r st msg < <(tail -n 1 "$OUT/b-result.txt")
result b "${st:-FAIL}" "${msg:-no output}"
endpart

# ---------------------------------------------------------------- c. resident search
part c "$CAP_C" "merges on $MODE: components, then a search with resident: true"
if demix_run "$STORE_A" "$(left)" c-run.log run "$MANIFEST" --target search; then
  py "$STORE_A" "$MODE" <<'EOF'
import json, math, os, sys
store, mode = sys.argv[1], sys.argv[2]
rec = json.load(open(os.path.join(store, "state", "gpu-check", "search.json")))
tree = rec["tree"]
base = os.path.join(store, "trees", tree[:2], tree)
res = json.load(open(os.path.join(base, rec["outputs"]["result"]["path"])))
mix = json.load(open(os.path.join(base, rec["outputs"]["mixture"]["path"])))
p = rec["record"]["params"]
rounds = p.get("rounds", [])
targets = p.get("targets", [])
proxies = res.get("proxies", [])
cost = res.get("cost", {})
n = len(proxies)
scored = sum(1 for x in proxies
             if len(x.get("scores") or []) == len(targets)
             and all(isinstance(v, (int, float)) and math.isfinite(v) for v in x["scores"]))
wsum = sum(mix.values())
best = min((x["objective"] for x in proxies), default=float("nan"))
secs = cost.get("evaluate_seconds", float("nan"))
ok = (n == sum(rounds) == cost.get("proxies_evaluated") and scored == n and len(targets) > 0
      and abs(wsum - 1) < 1e-6 and p.get("resident") is True
      and str(p.get("device")).split(":")[0] == mode)
print("PASS" if ok else "FAIL",
      f"{n} proxies in search.json, {scored} scored on all {len(targets)} targets (rounds {rounds}); "
      f"resident {p.get('resident')}, device {p.get('device')}; "
      f"{n / secs * 60 if secs else float('nan'):.0f} proxies/min ({secs:.1f} s merging and scoring), "
      f"best proxy objective {best:.4f}; mixture "
      + ", ".join(f"{k} {v:.3f}" for k, v in mix.items()) + f" (sum {wsum:.6f})")
EOF
else
  echo "FAIL demix run failed or ran out of time"
fi >"$OUT/c-result.txt"
read -r st msg < <(tail -n 1 "$OUT/c-result.txt")
result c "${st:-FAIL}" "${msg:-no output}"
endpart

# ---------------------------------------------------------------- d. throughput
part d "$(global_left)" "training throughput and MFU (peak $PEAK GFLOP/s)"
mkdir -p "$OUT/throughput"
BENCH_DEV=$MODE
# bench IMPL SHAPE-ARRAY-NAME CAP
bench() {
  local impl="$1" cap="$3"
  local -n sh="$2"
  local name="${sh[0]}" out="$OUT/throughput/$1-${sh[0]}"
  local args=("${sh[1]}" "${sh[2]}" "${sh[3]}" "${sh[4]}" "${sh[5]}" "${sh[6]}" "$BENCH_THREADS" "${sh[7]}")
  local envs=(DEMIX_BENCH_DEVICE="$BENCH_DEV" DEMIX_BENCH_BF16="$BF16" DEMIX_BENCH_PEAK_GFLOPS="$PEAK"
    DEMIX_BENCH_KV_HEADS="${sh[8]}" DEMIX_BENCH_HEAD_DIM="${sh[9]}" DEMIX_BENCH_TIE="${sh[10]}"
    DEMIX_BENCH_WARMUP="$BENCH_WARMUP")
  local t0
  t0=$(now)
  cap=$(min "$cap" "$(global_left)")
  case "$impl" in
    demix)
      if [ ! -x "$BENCH" ]; then
        echo "  $impl $name: no $BENCH (cargo build --release -p demix-ml --example bench_train on the build machine)"
        return
      fi
      env "${envs[@]}" timeout -k 10 "$cap" "$BENCH" "${args[@]}" >"$out.json" 2>"$out.err" ;;
    eager)
      env "${envs[@]}" timeout -k 10 "$cap" "$PY" "$ROOT/benches/train_pytorch.py" "${args[@]}" >"$out.json" 2>"$out.err" ;;
    compile)
      env "${envs[@]}" BENCH_COMPILE=1 timeout -k 10 "$cap" "$PY" "$ROOT/benches/train_pytorch.py" "${args[@]}" >"$out.json" 2>"$out.err" ;;
  esac
  local rc=$?
  if [ $rc = 0 ]; then
    echo "  $impl $name: $(since "$t0") s (cap $cap s)"
  else
    [ $rc = 124 ] && echo "timeout after $cap s" >>"$out.err"
    echo "  $impl $name: FAILED rc $rc after $(since "$t0") s (cap $cap s); last lines of $out.err:"
    tail -5 "$out.err" | sed 's/^/    /'
  fi
}
bench demix SHAPE_S "$CAP_DEMIX_S"
bench demix SHAPE_L "$CAP_DEMIX_L"
bench eager SHAPE_S "$CAP_EAGER_S"
bench eager SHAPE_L "$CAP_EAGER_L"
# torch.compile last: it gets what the budget has left (its first step compiles).
gl=$(global_left)
bench compile SHAPE_S "$(min "$CAP_COMPILE_S" $((gl > MIN_COMPILE_L + 30 ? gl - MIN_COMPILE_L : 30)))"
bench compile SHAPE_L "$(( $(global_left) > 10 ? $(global_left) - 5 : 5 ))"
py "$OUT/throughput" "${SHAPE_S[0]}" "${SHAPE_L[0]}" >"$OUT/d-result.txt" <<'EOF'
import json, math, os, sys
d, shapes = sys.argv[1], sys.argv[2:]
impls = [("demix", "demix (tch)"), ("eager", "pytorch eager"), ("compile", "torch.compile")]
rows, got = [], {}
for key, label in impls:
    for s in shapes:
        try:
            r = json.loads(open(os.path.join(d, f"{key}-{s}.json")).read().strip().splitlines()[-1])
        except Exception:
            r = None
        got[key, s] = r
table = ["| impl | shape | params | seq x batch | tokens/s | MFU | loss |", "|---|---|---|---|---|---|---|"]
for key, label in impls:
    for s in shapes:
        r = got[key, s]
        if r:
            n = r["params"]
            table.append(f"| {label} | {s} | {n / 1e6:.0f}M" if n >= 1e7 else f"| {label} | {s} | {n / 1e6:.2f}M")
            table[-1] += (f" | {r['seq']} x {r['batch']} | "
                         f"{r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['final_loss']:.3f} |")
        else:
            table.append(f"| {label} | {s} | | | failed | | |")
for s in shapes:
    a, b = got["demix", s], got["eager", s]
    if a and b:
        table.append(f"demix / eager at {s}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x")
    c = got["compile", s]
    if a and c:
        table.append(f"demix / torch.compile at {s}: {a['tokens_per_s'] / c['tokens_per_s']:.2f}x"
                     + (f" (compile's first step {c['first_step_s']:.0f} s)" if c.get("first_step_s") else ""))
sane = lambda r: r is not None and math.isfinite(r["tokens_per_s"]) and 0 < r["mfu"] <= 1 and math.isfinite(r["final_loss"])
ok = all(sane(got[k, s]) for k in ("demix", "eager") for s in shapes)
missing = [f"{k} {s}" for (k, s), r in got.items() if not sane(r)]
status = "PASS" if ok else "FAIL"
print(status, "demix and eager rows for both shapes, 0 < MFU <= 1"
      + (f"; missing or implausible: {', '.join(missing)}" if missing else ""))
for line in table:
    print(line)
EOF
tail -n +2 "$OUT/d-result.txt"
read -r st msg <"$OUT/d-result.txt"
result d "${st:-FAIL}" "${msg:-no output}"
if grep -q '| torch.compile | .* failed' "$OUT/d-result.txt"; then
  result d WARN "a torch.compile row is missing (timeout or no compiler); it does not fail the check"
fi
endpart

# ---------------------------------------------------------------- summary
echo
echo "== summary ($MODE, $(since "$T_START") s in all, budget $TOTAL s)"
awk -F'\t' '{ printf "%-4s %-2s %6.1f s  %s\n", $2, $1, $3, $4 }' "$RESULTS"
echo "log: $OUT/gpu-check.log"
if grep -q $'\tFAIL\t' "$RESULTS"; then
  echo "FAILED"
  exit 1
fi
echo "ALL PASSED"
