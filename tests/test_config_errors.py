"""Every config mistake fails before Ray starts, naming the key; the config layer imports no torch."""

import subprocess
import sys
import time

import pytest

from spacevista.configs.checks import ConfigError, check_config
from spacevista.configs.loader import compose, to_train_config


def _check(overrides: list[str]) -> None:
    check_config(to_train_config(compose(overrides)))


@pytest.mark.parametrize("override,named", [
    ("rollout.prompts_per_step=0", "rollout.prompts_per_step=0"),
    ("rollout.temperature=-1", "rollout.temperature"),
    ("rollout.max_tokens=0", "rollout.max_tokens"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("rollout.engine=trt", "rollout.engine"),
    ("reward.weights.format=-0.5", "reward.weights.format"),
    ("reward.weights.accuracy=nan", "reward.weights.accuracy"),
    ("curriculum.stages=[]", "curriculum.stages"),
    ("curriculum.stages.0.reward_weights.scale=-1", "curriculum.stages[0].reward_weights.scale"),
    ("+curriculum.stages.0.promote_when.bogus=0.5", "curriculum.stages[0].promote_when.bogus"),
    ("curriculum.stages.0.promote_when.format=2", "curriculum.stages[0].promote_when.format"),
    ("curriculum.stages.0.max_steps=0", "curriculum.stages[0].max_steps"),
    ("learner.optim.schedule=linear", "learner.optim.schedule"),
    ("learner.optim.lr=0", "learner.optim.lr"),
    ("learner.objective.loss_agg_mode=mean", "learner.objective.loss_agg_mode"),
    ("learner.router.hidden=0", "learner.router.hidden"),
    ("data.invalid=ignore", "data.invalid"),
    ("steps=0", "steps"),
    ("cluster.learner.strategy=ANY", "cluster.learner.strategy"),
])
def test_bad_value_names_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        _check([override])


@pytest.mark.parametrize("override", ["rollout.nn=8", "+rollout.nn=8", "++rollout.nn=8"])
def test_unknown_key_is_refused_with_or_without_plus(override):
    with pytest.raises(ConfigError, match=r"rollout\.nn: unknown key.*did you mean rollout\.n\?"):
        compose([override])


def test_unknown_key_inside_a_list_item_is_refused():
    with pytest.raises(ConfigError, match=r"curriculum\.stages\.0\.bogus: unknown key"):
        compose(["+curriculum.stages.0.bogus=1"])


def test_fsdp_off_with_several_learner_ranks_says_what_to_do():
    with pytest.raises(ConfigError, match="learner.fsdp=false with cluster.learner.count=2.*cluster.learner.count=1"):
        _check(["learner.fsdp=false"])
    _check(["learner.fsdp=false", "cluster.learner.count=1"])


def test_cosine_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="learner.optim.warmup_steps=50 must be < the cosine horizon 40"):
        _check(["learner.optim.schedule=cosine", "learner.optim.warmup_steps=50"])
    _check(["learner.optim.schedule=cosine", "learner.optim.warmup_steps=50", "learner.optim.total_steps=100"])


def test_a_bad_plugin_is_one_error_naming_the_spec(tmp_path):
    from spacevista.preflight import validate_config

    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    cfg = to_train_config(compose([f"reward.plugins=[{{spec: '{broken}:score'}}, {{spec: 'no.such.module:f'}}]"]))
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = str(err.value).splitlines()
    assert any(line.strip().startswith("reward.plugins[0].spec=") and "not_a_module_anywhere" in line for line in lines)
    assert any(line.strip().startswith("reward.plugins[1].spec='no.such.module:f'") for line in lines)
    assert len(str(err.value)) < 1000  # one clear message, no retried tracebacks


def test_a_plugin_may_name_a_promotion_metric(tmp_path):
    from spacevista.preflight import validate_config

    plugin = tmp_path / "brevity.py"
    plugin.write_text("def brevity(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n")
    validate_config(to_train_config(compose([f"reward.plugins=[{{spec: '{plugin}:brevity'}}]",
                                             "+curriculum.stages.0.promote_when.brevity=0.5"])))


def test_cli_exits_2_naming_the_key_without_starting_ray(capsys, tmp_path):
    from spacevista.cli import main

    started = time.perf_counter()
    assert main(["train", "rollout.temperature=-1", f"run_dir={tmp_path}", "hydra.output_subdir=null"]) == 2
    elapsed = time.perf_counter() - started
    assert "rollout.temperature=-1.0: must be > 0.0" in capsys.readouterr().err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert elapsed < 30 and not (tmp_path / "checkpoints").exists()


def test_a_failed_start_leaves_no_log_handler_on_its_removed_directory(tmp_path):
    """The failed start removes Hydra's run directory; its train.log handler must go with it, or the next
    record logged anywhere in this process reopens the file and raises FileNotFoundError."""
    import logging

    from spacevista.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "rollout.temperature=-1", f"run_dir={run_dir}"]) == 2
    assert not run_dir.exists()
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    stale = [h.baseFilename for lg in loggers for h in lg.handlers
             if isinstance(h, logging.FileHandler) and str(tmp_path) in h.baseFilename]
    assert stale == []
    logging.getLogger("spacevista.test").warning("a record after the failed start")  # must not raise


def test_cli_refuses_a_plus_typo_before_hydra_composes(capsys):
    from spacevista.cli import main

    assert main(["train", "+rollout.nn=8"]) == 2
    assert "rollout.nn: unknown key" in capsys.readouterr().err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_config_layer_imports_no_torch_verl_or_ray():
    code = ("import sys; import spacevista.configs.loader, spacevista.configs.checks, spacevista.curriculum; "
            "from spacevista.configs.loader import compose, to_train_config; "
            "from spacevista.configs.checks import check_config; check_config(to_train_config(compose([]))); "
            "print(sorted(m for m in ('torch', 'verl', 'ray', 'peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_defaults_have_one_home():
    """The default groups only select (engine, estimator ...): every other value is the dataclass default."""
    import dataclasses

    from spacevista.configs.schema import TrainConfig

    cfg, schema = to_train_config(compose([])), TrainConfig()
    for group in ("model", "data", "rollout", "reward"):
        assert getattr(cfg, group) == getattr(schema, group), group
    cfg.learner.optim.betas = tuple(cfg.learner.optim.betas)  # OmegaConf stores tuples as lists
    assert dataclasses.asdict(cfg.learner) == dataclasses.asdict(schema.learner)
    assert (cfg.steps, cfg.async_rollout, cfg.checkpoint_every) == (schema.steps, schema.async_rollout, 10)


def test_a_start_that_fails_its_checks_leaves_no_run_directory(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "spacevista", "train", "rollout.prompts_per_step=0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "rollout.prompts_per_step" in proc.stderr
    assert list(tmp_path.iterdir()) == []
