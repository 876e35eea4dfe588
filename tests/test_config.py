"""Config composition and validation: unknown or ill-typed keys fail before Ray starts, naming the key."""

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from spacevista.preflight import ConfigError, validate_config
from spacevista.configs.loader import compose, to_train_config


def test_default_config_is_the_embedded_default():
    cfg = to_train_config(compose([]))
    assert cfg.model.path == "" and cfg.data.train == "" and cfg.cluster.address == ""
    assert cfg.rollout.engine == "hf" and cfg.curriculum.name == "progressive"
    assert cfg.learner.objective.adv_estimator == "grpo" and cfg.cluster.learner.count == 2
    validate_config(cfg)


def test_unknown_key_fails_naming_it():
    with pytest.raises(ConfigError, match="rollout.nn"):
        compose(["rollout.nn=3"])


def test_ill_typed_value_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["rollout.n=many"])
    assert "rollout.n" in str(err.value) + str(err.value.__cause__)


def test_group_overrides_compose():
    cfg = to_train_config(compose(["learner=dapo", "curriculum=mixed", "reward.weights.scale=0.5"]))
    assert cfg.learner.objective.clip_ratio_high > cfg.learner.objective.clip_ratio_low
    assert cfg.reward.weights.scale == 0.5 and len(cfg.curriculum.stages) == 1


def test_cross_field_rules_name_the_keys():
    cfg = to_train_config(compose(["rollout.prompts_per_step=3", "rollout.n=3", "model.experts=[indoor,outdoor]"]))
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "cluster.learner.count" in msg and "curriculum.stages[0].scales" in msg


def test_cli_rejects_a_bad_key_before_starting_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spacevista", "train", "rollout.bogus=1", f"run_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "rollout.bogus" in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()
