"""`spacevista train`: Hydra composes and validates the config, then the controller runs the job.

Validation (unknown keys, wrong types, cross-field rules) happens here, before Ray starts.
`-m` multiruns sweep curriculum settings; each run returns its final mean reward to Hydra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from spacevista.configs.loader import register_schema, to_train_config


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> float:
    from spacevista.actors.controller import train
    from spacevista.actors.setup import validate_config

    train_cfg = to_train_config(cfg)
    validate_config(train_cfg)
    run_dir = Path(train_cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
    result = train(train_cfg, run_dir, OmegaConf.to_container(cfg, resolve=True))
    print(f"run directory: {result.run_dir}")
    return result.final_reward


def hydra_main(argv: list[str]) -> int:
    """Run Hydra with `argv` as its command line (overrides, -m, --cfg ...)."""
    register_schema()
    saved = sys.argv
    sys.argv = ["spacevista train", *argv]
    try:
        _hydra_entry()
    finally:
        sys.argv = saved
    return 0
