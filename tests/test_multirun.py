"""`spacevista train -m` sweeps curriculum settings: one run directory per combination."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_train_e2e import SHORT

pytestmark = pytest.mark.slow


def test_multirun_sweeps_curricula(tmp_path, ray_temp_dir):
    sweep = tmp_path / "sweep"
    overrides = [o for o in SHORT if not o.startswith("curriculum=")] + [
        "steps=1", "eval_every=0", "log.plot=false", "log.tensorboard=false",
        f"data.synth.cache_dir={tmp_path / 'data'}", f"model.cache_dir={tmp_path / 'models'}",
        f"cluster.temp_dir={ray_temp_dir}", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-m", "spacevista", "train", "-m", "curriculum=progressive,mixed",
                           *overrides], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    assert [p.name for p in runs] == ["0", "1"]
    stages = [json.loads((p / "metrics.jsonl").read_text().splitlines()[0])["curriculum/stage"] for p in runs]
    assert stages == [0.0, 0.0]
    names = [(p / ".hydra" / "overrides.yaml").read_text() for p in runs]
    assert "curriculum=progressive" in names[0] and "curriculum=mixed" in names[1]
