#!/usr/bin/env bash
# Installs libtorch 2.11.0 (the exact version tch 0.24 is built against) from
# PyPI's torch wheel into a per-user cache outside any repo, once, and prints
# the directory to export as LIBTORCH. Idempotent: a stamp file written last
# marks a complete install, so an interrupted install is redone.
#
#   export LIBTORCH="$(scripts/libtorch.sh)"
#
# LIBTORCH_BYPASS_VERSION_CHECK is not needed: torch-sys checks the version
# only from $LIBTORCH/build-version, which libtorch zips have and pip's torch
# lacks; the pip install itself pins 2.11.0 exactly.
#
# Set DEMIX_HF_CHECK=1 to also install `transformers` into the same venv (for
# scripts/hf_check.py). Progress goes to stderr; only the path goes to stdout.
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE="${DEMIX_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/demix/torch-${TORCH_VERSION}}"
VENV="$CACHE/venv"
STAMP="$CACHE/.complete"
HF_STAMP="$CACHE/.transformers-complete"
PY="${PYTHON:-python3}"

log() { echo "libtorch.sh: $*" >&2; }

if [[ ! -f "$STAMP" ]]; then
  log "installing torch==$TORCH_VERSION into $VENV (several GB, takes a while)"
  mkdir -p "$CACHE"
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "torch==$TORCH_VERSION" >&2
  "$VENV/bin/python" - >&2 <<PYEOF
import torch
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
PYEOF
  touch "$STAMP"
fi

if [[ "${DEMIX_HF_CHECK:-0}" == "1" && ! -f "$HF_STAMP" ]]; then
  log "installing transformers + safetensors into $VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "transformers==5.24.0" "safetensors==0.8.0" >&2
  touch "$HF_STAMP"
fi

TORCH_DIR="$("$VENV/bin/python" - <<'PYEOF'
import os, importlib.util
spec = importlib.util.find_spec("torch")
print(os.path.dirname(spec.origin))
PYEOF
)"
[[ -d "$TORCH_DIR/lib" && -d "$TORCH_DIR/include" ]] || { log "no lib/ include/ in $TORCH_DIR"; exit 1; }
echo "$TORCH_DIR"
