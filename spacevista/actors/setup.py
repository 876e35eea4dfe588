"""Before the loop: cross-field config checks, data and policy preparation, Ray start.

Data and the tiny policy are built once and cached by their parameters (atomic renames), so the
embedded default costs seconds on its second run and concurrent runs agree on one copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from spacevista.atomic_dir import build_once
from spacevista.cluster.submit import protect_token_file
from spacevista.configs.checks import ConfigError, rule_problems, value_problems
from spacevista.configs.schema import ClusterConfig, RewardConfig, TrainConfig
from spacevista.data.io import RecordDataset
from spacevista.data.sampler import ScaleSampler

__all__ = ["ConfigError", "validate_config", "prepare_run", "start_ray"]


def validate_config(cfg: TrainConfig) -> None:
    """Every check before Ray starts: values and rules between keys (`configs.checks`), verl's estimator
    and loss names, and each reward plugin imported and built as a reward worker would; one ConfigError."""
    plugin_names: list[str] = []
    problems = _objective_problems(cfg) + _plugin_problems(cfg, plugin_names)
    problems = value_problems(cfg) + rule_problems(cfg, plugin_names) + problems
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _objective_problems(cfg: TrainConfig) -> list[str]:
    from spacevista.policies.objectives import objective_problems

    return objective_problems(cfg.learner.objective, "learner.objective")


def _plugin_problems(cfg: TrainConfig, names: list[str]) -> list[str]:
    """Import every plugin here, in the driver (a reward worker would fail only after Ray and SFT)."""
    from spacevista.rewards.pipeline import RewardPipeline
    from spacevista.rewards.registry import load_reward

    problems = []
    for i, plugin in enumerate(cfg.reward.plugins):
        if not plugin.spec.strip():
            continue  # configs.checks names it
        try:
            registered_name = load_reward(plugin.spec)[0]
            names.append(plugin.name or registered_name)  # the component's name
        except Exception as err:  # PluginLoadError, or anything a plugin module raises on import
            problems.append(f"reward.plugins[{i}].spec={plugin.spec!r}: {err}")
    if not problems and names:
        try:
            RewardPipeline(dataclasses.replace(cfg.reward, isolate_plugins=False))
        except Exception as err:
            problems.append(f"reward.plugins: {err}")
    return problems


@dataclass
class PreparedRun:
    model_path: Path
    dataset: RecordDataset
    sampler: ScaleSampler
    sft_sampler: ScaleSampler
    test_path: Path | None


def _synthetic_data(cfg: TrainConfig) -> Path:
    from spacevista.data.synth import SYNTH_VERSION, synthesize

    s = cfg.data.synth
    target = (Path(s.cache_dir).expanduser()
              / f"synth-v{SYNTH_VERSION}-n{s.n}-seed{s.seed}-f{s.frames}-px{s.size}-t{s.test_fraction:g}")

    def build(tmp: Path) -> None:
        synthesize(tmp, s.n, s.seed, frames=s.frames, size=s.size, test_fraction=s.test_fraction, overwrite=True)

    return build_once(target, build, marker="manifest.json")


def prepare_model(cfg: TrainConfig) -> Path:
    """A local Hugging Face directory: `model.path`, or the tiny policy built (once) from the synthetic corpus."""
    if cfg.model.path:
        path = Path(cfg.model.path).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.path={cfg.model.path!r}: no config.json there (a local Hugging Face "
                                    "directory is required; nothing is downloaded)")
        return path
    from spacevista.data.synth import tokenizer_corpus
    from spacevista.policies.tiny import build_tiny_policy

    return build_tiny_policy(Path(cfg.model.cache_dir).expanduser(), tokenizer_corpus(), cfg.model.tiny)


def prepare_run(cfg: TrainConfig, run_dir: Path) -> PreparedRun:
    if cfg.data.train:
        train_path, test_path = Path(cfg.data.train), Path(cfg.data.test) if cfg.data.test else None
    else:
        root = _synthetic_data(cfg)
        train_path, test_path = root / "train", root / "test"
    dataset, test_path = _validated_data(cfg, train_path, test_path, run_dir)
    scales_of = dataset.scales
    first = cfg.curriculum.stages[0].scales
    sampler = ScaleSampler(scales_of, {s: w for s, w in first.items() if w > 0}, seed=cfg.seed)
    sft_sampler = ScaleSampler(scales_of, None, seed=cfg.seed + 1)
    return PreparedRun(prepare_model(cfg), dataset, sampler, sft_sampler, test_path)


class ValidRows:
    """A dataset seen through the rows that passed validation: what the samplers index and draw."""

    def __init__(self, dataset: RecordDataset, kept: list[int]):
        self.dataset, self.kept, self.path = dataset, kept, dataset.path
        all_scales = dataset.scales
        self.scales = [all_scales[i] for i in kept]

    def __len__(self) -> int:
        return len(self.kept)

    def take(self, indices: list[int]) -> list:
        return self.dataset.take([self.kept[i] for i in indices])


def _validated_data(cfg: TrainConfig, train_path: Path, test_path: Path | None,
                    run_dir: Path) -> tuple[RecordDataset | ValidRows, Path | None]:
    """Check every train and test row before Ray starts (data.invalid: fail naming the row, or skip it:
    rejects.jsonl in the run directory, the samplers never draw it, the test split is rewritten without it)."""
    import pyarrow.parquet as pq

    from spacevista.data.validate import apply_policy, validate_dataset

    cache = Path(cfg.data.synth.cache_dir).expanduser() / "validated"
    train = validate_dataset(train_path, cache)
    test = validate_dataset(test_path, cache) if test_path is not None else None
    apply_policy([train] + ([test] if test else []), cfg.data.invalid, run_dir / "rejects.jsonl")
    dataset = RecordDataset(train_path)
    if train.rejects:
        print(f"data.invalid=skip: {len(train.rejects)} of {train.rows} training rows skipped "
              f"(listed in {run_dir / 'rejects.jsonl'})", flush=True)
        dataset = ValidRows(dataset, train.kept)
    if test is not None and test.rejects:
        kept_test = run_dir / "data" / "test.parquet"
        kept_test.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(RecordDataset(test_path).table.take(test.kept), kept_test)
        print(f"data.invalid=skip: {len(test.rejects)} of {test.rows} test rows skipped", flush=True)
        test_path = kept_test
    return dataset, test_path


def start_ray(cluster: ClusterConfig, run_dir: Path) -> bool:
    """Connect to `cluster.address`, or start a local Ray bound to loopback; True when this process started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=True)
        return True
    kwargs: dict[str, Any] = dict(address="local", num_cpus=cluster.num_cpus or os.cpu_count(),
                                  include_dashboard=cluster.dashboard, log_to_driver=True,
                                  _node_ip_address="127.0.0.1")
    if cluster.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if cluster.temp_dir:
        kwargs["_temp_dir"] = str(Path(cluster.temp_dir).expanduser())
    with loopback_node_ip():
        ray.init(**kwargs)
    protect_token_file()
    return True


@contextlib.contextmanager
def loopback_node_ip() -> Iterator[None]:
    """Make a local Ray take 127.0.0.1 as its node address, so that GCS, raylet, workers, agents and the
    metrics endpoint bind loopback only. Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's
    routable address unless its cluster mode is off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read once
    when Ray is imported, hence the module constant too); both are restored after `ray.init`."""
    from ray._private import ray_constants

    key, saved_env = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env


def registered_plugins(reward: RewardConfig) -> dict[str, Any]:
    """{name: function} of the configured plugins registered in THIS process with `@register_reward`:
    a Ray reward worker is another process, which never ran the decorator, so the functions travel
    with the worker's constructor (by value when their module is not importable as a package)."""
    import sys

    from ray import cloudpickle

    from spacevista.rewards.registry import registered_reward

    shipped = {}
    for plugin in reward.plugins:
        fn = registered_reward(plugin.spec)
        if fn is None:
            continue
        module = sys.modules.get(getattr(fn, "__module__", ""))
        if module is not None and module.__name__ != "__main__" and not module.__name__.startswith("spacevista."):
            cloudpickle.register_pickle_by_value(module)  # the worker may not be able to import it
        shipped[plugin.spec] = fn
    return shipped
