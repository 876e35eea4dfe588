#!/usr/bin/env bash
# GPU check: on a CUDA machine, run the `@pytest.mark.gpu` tests (tests/test_gpu.py) and print their figures:
# a bf16 FSDP2 learner step (2 ranks with 2 GPUs, else 1), routed generation with the transformers engine,
# the rollout/learner log-prob gap in bf16, vLLM on the GPU when it is installed. Without CUDA: a skip, exit 0.
#
#   scripts/gpu_check.sh [pytest args...]
#
# Offline: needs no network. torch must be installed; our other runtime packages are used where installed.
# To bring them to a torch-only machine, put wheels in $GPU_CHECK_WHEELS (default <repo>/wheels): they are
# installed with --no-index --no-deps into a venv that sees the system torch. What fits in 64 MiB:
# transformers, tokenizers, huggingface_hub, safetensors, peft, accelerate, regex, pyyaml, tqdm, pillow (~25 MB).
# verl imports ray at import time and ray's wheel alone is ~70 MB: the learner checks need ray and verl
# installed on the machine and otherwise skip, naming the missing module. No wheel is needed where
# `pip install -e .` has run.
# Env: PYTHON (default <repo>/.venv/bin/python, else python3), GPU_CHECK_WHEELS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: skipped: no CUDA device visible to torch ($PY)"
    exit 0
fi

WHEELS="${GPU_CHECK_WHEELS:-$ROOT/wheels}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    VENV="$ROOT/.venv-gpu-check"
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
    PY="$VENV/bin/python"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF'
import importlib.util, torch
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
missing = [m for m in ("transformers", "peft", "tokenizers", "verl", "ray", "vllm", "flash_attn")
           if importlib.util.find_spec(m) is None]
print("gpu_check: not installed (their checks skip): " + (", ".join(missing) or "none"))
PYEOF

set +e
"$PY" -m pytest tests/test_gpu.py -m gpu -s -q -p no:cacheprovider -o addopts="-ra" "$@" | tee /tmp/gpu_check.$$.log
rc=${PIPESTATUS[0]}
set -e
echo "gpu_check: figures"
grep "^GPU-FIGURE" /tmp/gpu_check.$$.log | sed 's/^GPU-FIGURE /  /' || echo "  (none: every check skipped or failed)"
rm -f /tmp/gpu_check.$$.log
exit "$rc"
