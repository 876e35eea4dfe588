"""Compose and validate the training config (Hydra + structured schema), for the CLI and tests."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from spacevista.configs.checks import ConfigError, key_problem, unknown_keys
from spacevista.configs.schema import TrainConfig

CONFIG_DIR = str(Path(__file__).parent)


def register_schema() -> None:
    """Make `train_schema` (the typed root) available to Hydra's defaults list."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed, validated config for `overrides`, outside of a Hydra app (tests, eval)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    check_overrides(list(overrides or []))
    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


def check_overrides(args: list[str]) -> None:
    """Raise ConfigError naming every override whose key the schema lacks, `+`/`++` prefixed or not.

    Hydra would suggest `+key=value` for a typo, and then accept and ignore the new key; here every key
    must be declared. Command-line flags (`-m`, `--cfg job`) and `hydra.*` keys are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # a syntax error: Hydra reports it with its own message
    problems = [problem for o in overrides if not o.is_hydra_override() and o.package is None
                if (problem := key_problem(o.key_or_group.split(".")))]
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """A typed TrainConfig object (dataclass instances all the way down); unknown keys raise ConfigError."""
    problems = unknown_keys(OmegaConf.to_container(cfg, resolve=False))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    plain = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
    return OmegaConf.to_object(plain)  # type: ignore[return-value]
