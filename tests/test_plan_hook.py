"""`spacevista train` refuses a GPU plan that cannot fit before Ray starts, naming the role and part."""

from __future__ import annotations

import pytest
import ray
from test_train_e2e import SHORT

from spacevista.actors.controller import run_training
from spacevista.cluster.plan import PlanError
from spacevista.configs.loader import compose, to_train_config


def test_a_plan_that_cannot_fit_fails_before_ray(tmp_path):
    cfg = to_train_config(compose([*SHORT, f"run_dir={tmp_path / 'run'}", f"data.synth.cache_dir={tmp_path / 'data'}",
                                   f"model.cache_dir={tmp_path / 'models'}", "cluster.learner.num_gpus=1",
                                   "cluster.gpu_memory_gib=0.001"]))
    with pytest.raises(PlanError, match="learner"):
        run_training(cfg, tmp_path / "run")
    assert not ray.is_initialized()
