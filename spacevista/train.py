"""`spacevista train`: Hydra composes and validates the config, then the controller runs the job.

Every config and data error surfaces here, before Ray starts, as one message naming the key (or the
file, row and field) and exit code 2: unknown keys (with or without `+`) are refused before Hydra
composes, values and rules between keys are checked, reward plugins are imported, and every data
row is validated. `-m` multiruns sweep curriculum settings; each run returns its final mean reward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from spacevista.configs.checks import ConfigError, check_config
from spacevista.configs.loader import check_overrides, register_schema, to_train_config

EXIT_INVALID = 2


HYDRA_FILES = {".hydra", "train.log"}  # what Hydra writes into a run's output directory before our code runs


def _fail(err: Exception) -> None:
    """Exit 2 with the message; a run directory holding nothing but Hydra's own files goes too, so a
    start that failed its checks leaves nothing behind."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    output = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    if output is not None and output.is_dir() and {p.name for p in output.iterdir()} <= HYDRA_FILES:
        import shutil

        _drop_file_handlers(output)  # Hydra's file handler holds train.log open
        shutil.rmtree(output, ignore_errors=True)
        if output.parent.name == "runs" and not any(output.parent.iterdir()):
            output.parent.rmdir()  # Hydra's default parent (runs/<time>), now empty
    raise SystemExit(EXIT_INVALID)


def _drop_file_handlers(directory: Path) -> None:
    """Close and detach every logging file handler writing under `directory`. Closing is not enough: a closed
    FileHandler reopens its file on the next record, and once the directory is gone that record raises
    FileNotFoundError in whatever code of this process logs next (it did: matplotlib's first import)."""
    import logging

    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(directory):
                logger.removeHandler(handler)
                handler.close()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> float:
    from spacevista.cluster.plan import PlanError
    from spacevista.records.io import DataError

    try:
        train_cfg = to_train_config(cfg)
        check_config(train_cfg)  # the pure checks first: most mistakes fail here in well under a second
        from spacevista.preflight import validate_config

        validate_config(train_cfg)
    except ConfigError as err:
        _fail(err)
    from spacevista.actors.controller import run_training

    run_dir = Path(train_cfg.run_dir or HydraConfig.get().runtime.output_dir).resolve()
    try:
        result = run_training(train_cfg, run_dir, OmegaConf.to_container(cfg, resolve=True))
    except (DataError, PlanError) as err:  # the data check and the GPU memory plan, before Ray starts
        _fail(err)
    print(f"run directory: {result.run_dir}")
    return result.final_reward


def hydra_main(argv: list[str]) -> int:
    """Run Hydra with `argv` as its command line (overrides, -m, --cfg ...); 2 on an invalid config."""
    try:
        check_overrides(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    register_schema()
    saved = sys.argv
    sys.argv = ["spacevista train", *argv]
    try:
        _hydra_entry()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return 0
