"""Code health gates that run with the suite: ruff is clean (pyproject's [tool.ruff]), every module
is under 400 lines, and the pure layers import no Ray (nor torch, where the architecture forbids it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.fail(f"ruff is part of the test extra but missing at {ruff}: pip install -e '.[test]'")
    proc = subprocess.run([str(ruff), "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_every_module_is_under_400_lines():
    long = {str(p.relative_to(ROOT)): n for folder in ("spacevista", "benchmarks", "scripts")
            for p in (ROOT / folder).rglob("*.py") if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert long == {}, f"modules of {MAX_LINES}+ lines: {long}"


# The pure layers (ARCHITECTURE.md section 2) never import Ray; those that must not import torch don't either.
PURE_LAYERS = {
    "spacevista.scales": ("ray", "torch"),
    "spacevista.configs": ("ray", "torch"),
    "spacevista.rewards": ("ray", "torch"),
    "spacevista.curriculum": ("ray", "torch"),
    "spacevista.data.convert": ("ray", "torch"),  # the converter, its sources and answers
    "spacevista.data.synth": ("ray", "torch"),
    "spacevista.data.io": ("ray", "torch"),
    "spacevista.policies.router": ("ray",),
    "spacevista.policies.objectives": ("ray",),
}


@pytest.mark.parametrize("module", sorted(PURE_LAYERS))
def test_pure_layers_import_neither_ray_nor_torch_where_forbidden(module):
    forbidden = sorted(PURE_LAYERS[module])
    code = f"import sys, {module}; print(sorted(set({forbidden!r}) & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "[]", f"importing {module} loads {proc.stdout.strip()}"
