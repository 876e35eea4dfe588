"""Before the loop: cross-field config checks, data and policy preparation, Ray start.

Data and the tiny policy are built once and cached by their parameters (atomic renames), so the
embedded default costs seconds on its second run and concurrent runs agree on one copy.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from spacevista.configs.schema import ClusterConfig, RewardConfig, StageConfig, TrainConfig
from spacevista.data.io import RecordDataset
from spacevista.data.sampler import ScaleSampler
from spacevista.scales import SCALES


class ConfigError(ValueError):
    """A config whose keys are individually valid but do not fit together; names the keys."""


def validate_config(cfg: TrainConfig) -> None:
    """Checks that need more than one key (types and names are already checked by the schema)."""
    problems = []
    unknown = [e for e in cfg.model.experts if e not in SCALES]
    if unknown or not cfg.model.experts:
        problems.append(f"model.experts: unknown scale(s) {unknown}; expected a subset of {list(SCALES)}")
    for i, stage in enumerate(cfg.curriculum.stages):
        missing = [s for s, w in stage.scales.items() if w > 0 and s not in cfg.model.experts]
        if missing:
            problems.append(f"curriculum.stages[{i}].scales: {missing} have no expert in model.experts")
    if cfg.rollout.engine not in ("hf", "vllm"):
        problems.append(f"rollout.engine: {cfg.rollout.engine!r} is not one of hf, vllm")
    world = cfg.cluster.learner.count
    per_step = cfg.rollout.prompts_per_step * cfg.rollout.n
    if per_step % world:
        problems.append(f"rollout.prompts_per_step * rollout.n = {per_step} must be divisible by "
                        f"cluster.learner.count = {world} (every learner rank takes an equal share)")
    if cfg.learner.sft.steps and cfg.learner.sft.batch_size % world:
        problems.append(f"learner.sft.batch_size = {cfg.learner.sft.batch_size} must be divisible by "
                        f"cluster.learner.count = {world}")
    if cfg.rollout.n < 2 and cfg.learner.objective.adv_estimator in ("grpo", "rloo"):
        problems.append(f"rollout.n = {cfg.rollout.n}: {cfg.learner.objective.adv_estimator} needs groups of >= 2")
    if cfg.learner.router.mode not in ("label", "learned"):
        problems.append(f"learner.router.mode: {cfg.learner.router.mode!r} is not one of label, learned")
    if cfg.steps < 1 or cfg.checkpoint_every < 1:
        problems.append(f"steps ({cfg.steps}) and checkpoint_every ({cfg.checkpoint_every}) must be >= 1")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


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
    root = Path(s.cache_dir).expanduser()
    target = root / f"synth-v{SYNTH_VERSION}-n{s.n}-seed{s.seed}-f{s.frames}-px{s.size}-t{s.test_fraction:g}"
    if (target / "manifest.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".synth-"))
    try:
        synthesize(tmp, s.n, s.seed, frames=s.frames, size=s.size, test_fraction=s.test_fraction, overwrite=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    dataset = RecordDataset(train_path)
    scales_of = dataset.scales
    first = cfg.curriculum.stages[0].scales
    sampler = ScaleSampler(scales_of, {s: w for s, w in first.items() if w > 0}, seed=cfg.seed)
    sft_sampler = ScaleSampler(scales_of, None, seed=cfg.seed + 1)
    return PreparedRun(prepare_model(cfg), dataset, sampler, sft_sampler, test_path)


def start_ray(cluster: ClusterConfig, run_dir: Path) -> bool:
    """Connect to `cluster.address`, or start a local Ray; True when this process started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=True)
        return True
    kwargs: dict[str, Any] = dict(address="local", num_cpus=cluster.num_cpus or os.cpu_count(),
                                  include_dashboard=cluster.dashboard, log_to_driver=True,
                                  _node_ip_address="127.0.0.1")  # a local run listens on loopback only
    if cluster.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if cluster.temp_dir:
        kwargs["_temp_dir"] = str(Path(cluster.temp_dir).expanduser())
    ray.init(**kwargs)
    return True


def reward_config_dict(reward: RewardConfig) -> dict[str, Any]:
    """Our config group -> the reward pipeline's plain-data config."""
    return {
        "weights": {**dataclasses.asdict(reward.weights), "gate_scale": reward.scale_gate},
        "neighbour_scale_credit": reward.neighbour_scale_credit,
        "plugins": [{"spec": p.spec, "weight": p.weight} for p in reward.plugins],
    }


def stage_reward_weights(stage: StageConfig) -> dict[str, Any]:
    return {**dataclasses.asdict(stage.reward_weights), "gate_scale": stage.scale_gate}
