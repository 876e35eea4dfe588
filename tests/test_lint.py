"""Code health gates that run with the suite: ruff is clean (pyproject's [tool.ruff]) and every module
is under 400 lines."""

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
