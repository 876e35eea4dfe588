"""Code health gates that run with the suite: ruff is clean (pyproject's [tool.ruff]), every module
is under 400 lines, and the layering holds: import-linter's contracts (pyproject's [tool.importlinter]) are
kept and break on a forbidden import, and no module loads at import time what its layer forbids."""

from __future__ import annotations

import os
import shutil
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


# ---- the layering ------------------------------------------------------------------------------------
# Declared once, in pyproject.toml's [tool.importlinter] contracts (layers; forbidden torch / Ray / verl). The
# contracts see every import statement, lazy ones too; the fresh-interpreter checks below see what an import
# really loads at import time (through other packages as well, e.g. verl importing Ray).
PURE_LAYERS = ("scales", "configs", "grammar", "rewards", "curriculum", "records", "datasets")
MODEL_LAYER = ("policies",)
RAY_FREE_ELSEWHERE = ("spacevista.learner.checkpoint_files",)  # eval and export read checkpoints without Ray


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).with_name("lint-imports")
    if not tool.exists():
        pytest.fail(f"import-linter is part of the test extra but missing at {tool}: pip install -e '.[test]'")
    return subprocess.run([str(tool), "--no-cache"], capture_output=True, text=True, cwd=cwd, env=env)


def test_import_contracts_are_kept():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("spacevista/scales.py", "def _upward():\n    from spacevista.actors import controller  # noqa: F401\n",
     "nothing imports upward"),
    ("spacevista/records/schema.py", "def _upward():\n    import spacevista.datasets.synthetic.synth  # noqa: F401\n",
     "nothing imports upward"),
    ("spacevista/grammar/parse.py", "def _torch():\n    import torch  # noqa: F401\n",
     "the pure layers import neither torch nor Ray"),
    ("spacevista/policies/prompts.py", "def _ray():\n    import ray  # noqa: F401\n",
     "the model layer imports no Ray"),
    ("spacevista/rollout/engine.py", "def _verl():\n    from verl import DataProto  # noqa: F401\n",
     "verl's Ray-bound types enter only at the learner"),
])
def test_the_contracts_fail_on_a_forbidden_import(tmp_path, module, line, contract):
    """A copy of the package with one bad (lazy) import added: the contract that forbids it breaks."""
    shutil.copytree(ROOT / "spacevista", tmp_path / "spacevista", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + "\n\n" + line)
    proc = _lint_imports(tmp_path, {**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0, proc.stdout[-3000:]
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN") or " BROKEN (" in ln]
    assert any(ln.startswith(contract) for ln in broken), proc.stdout[-3000:]


def _modules(packages: tuple[str, ...]) -> list[str]:
    found = []
    for name in packages:
        path = ROOT / "spacevista" / name
        files = [path.with_suffix(".py")] if path.with_suffix(".py").exists() else sorted(path.rglob("*.py"))
        for f in files:
            parts = f.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


IMPORT_TIME_RULES = ({m: ("ray", "torch", "verl") for m in _modules(PURE_LAYERS)}
                     | {m: ("ray", "verl") for m in _modules(MODEL_LAYER)}
                     | {m: ("ray", "verl") for m in RAY_FREE_ELSEWHERE})


@pytest.mark.parametrize("module", sorted(IMPORT_TIME_RULES))
def test_importing_a_module_loads_nothing_its_layer_forbids(module):
    """In a fresh interpreter: a pure layer's module loads neither torch nor Ray; the model layer no Ray."""
    forbidden = sorted(IMPORT_TIME_RULES[module])
    code = f"import sys, {module}; print(sorted(set({forbidden!r}) & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "[]", f"importing {module} loads {proc.stdout.strip()}"


def test_the_record_schema_loads_no_dataset_maker_and_no_reward():
    """`from spacevista.records import Record` loads the schema and the scales, not the converter, the
    synthetic scenes or the reward pipeline (the old `data/__init__` imported all of them)."""
    code = ("import sys; from spacevista.records import Record; "
            "print(sorted(m for m in sys.modules if m.startswith('spacevista')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == str(["spacevista", "spacevista.records", "spacevista.records.schema",
                                       "spacevista.scales"])
