"""Compose and validate the training config (Hydra + structured schema), for the CLI and tests."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from spacevista.configs.schema import TrainConfig

CONFIG_DIR = str(Path(__file__).parent)


def register_schema() -> None:
    """Make `train_schema` (the typed root) available to Hydra's defaults list."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed, validated config for `overrides`, outside of a Hydra app (tests, eval)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """A typed TrainConfig object (dataclass instances all the way down)."""
    plain = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
    return OmegaConf.to_object(plain)  # type: ignore[return-value]
