#!/usr/bin/env bash
# The multi-GPU path, checked end to end in a few minutes on a machine with CUDA:
#
#   scripts/gpu-check.sh /path/to/a-small-Qwen3-model-dir
#
# 1. installs the project with the GPU extra (vllm, flash-attn) from wheels only: nothing is built;
# 2. FlexAttention's training path on CUDA: values and gradients against dense-mask SDPA;
# 3. logprob parity between vLLM and the learner's model after in-place weight updates;
# 4. a real run (bus, allocator, 1 actor, learner) of 3 learner steps on the given model,
#    configs/gpu/up-qwen3.yaml, and its generated tokens/s.
# Without CUDA it stops at once, exit status 3. The run goes to runs/gpu-check (replaced).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no CUDA: nvidia-smi finds no GPU on this machine; this check runs only where one is." >&2
    exit 3
fi
if [ $# -ne 1 ] || [ ! -f "$1/config.json" ]; then
    echo "usage: scripts/gpu-check.sh MODEL_DIR (a Hugging Face Qwen3 directory with config.json)" >&2
    exit 2
fi
MODEL_DIR=$(cd "$1" && pwd)
RUN_DIR=runs/gpu-check
PY=.venv/bin/python
step() { echo "== gpu-check: $*" >&2; }

step "install (GPU extra, wheels only)"
PIP_ONLY_BINARY=:all: bash scripts/install.sh
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu-check: no CUDA: torch in .venv sees no GPU (a CPU build of torch, or a driver mismatch)" >&2
    exit 3
}
"$PY" -c "import torch; print('gpu-check:', torch.cuda.device_count(), 'x', torch.cuda.get_device_name(0))"

# pytest -rs lists skips; a check that skipped here did not run, so it counts as failed.
run_check() {
    local out
    out=$("$PY" -m pytest -q -rs -p no:cacheprovider "$@" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | tail -n 3
    if echo "$out" | grep -q "skipped"; then
        echo "gpu-check: a check skipped on this machine" >&2
        return 1
    fi
}

step "FlexAttention training path on CUDA against the dense reference"
run_check tests/learner/test_tree_attention.py -k cuda

step "vLLM logprobs against the learner's model after weight updates"
run_check tests/actors/test_engine_vllm.py -k "logprobs_match_transformers_after_inplace_reloads"

step "3 learner steps with 1 actor on $MODEL_DIR"
rm -rf "$RUN_DIR"
"$PY" -m tracerl up --config configs/gpu/up-qwen3.yaml \
    --set "model_dir=$MODEL_DIR" --set "run.run_dir=$RUN_DIR" --set run.run_id=gpucheck \
    --set learner.training.max_steps=3 --set eval_tasks=0 --set timeout_s=1200

"$PY" - "$RUN_DIR" <<'PYEOF'
import sys
from pathlib import Path

from tracerl.metrics import metrics_path, read_metrics

steps = [r for r in read_metrics(metrics_path(Path(sys.argv[1]), "learner")) if "step" in r]
if len(steps) < 3:
    sys.exit(f"gpu-check: the run took {len(steps)} learner steps, not 3")
tokens = sum(float(r.get("batch.generated_tokens", 0)) for r in steps)
seconds = steps[-1]["time"] - steps[0]["time"] + float(steps[0].get("step_seconds", 0))
print(f"gpu-check: {len(steps)} learner steps, {tokens:.0f} generated tokens in {seconds:.1f} s: {tokens / seconds:.0f} tokens/s")
PYEOF
step "all checks passed"
