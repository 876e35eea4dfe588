"""Config checks that run before Ray starts, each naming the key: unknown keys (also those added with
Hydra's `+`), values outside their declared range or choices, and rules between keys.

Pure: reads the schema's dataclasses (their `limits` metadata) and the scale list; no torch or ray.
Checks that need a library (verl's estimator names, importing reward plugins, the semantic reward's model) are
`preflight.validate_config`'s, which runs these first.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from spacevista.configs.dense import dense_problems
from spacevista.configs.experts import expert_map, layout_problems
from spacevista.configs.schema import RewardWeights, TrainConfig
from spacevista.scales import SCALES, AnswerType

# What a stage's `promote_when` may name: the per-scale means the controller hands the curriculum
# (each reward component, the answer component as `accuracy`, the stage's and the fixed-weight totals).
PROMOTION_METRICS = ("format", "scale", "accuracy", "total", "fixed_total", *(t.value for t in AnswerType))


class ConfigError(ValueError):
    """A config that cannot run; the message names every offending key and what to do."""


def check_config(cfg: TrainConfig, plugin_names: Iterable[str] = ()) -> None:
    """Raise ConfigError listing every problem (values, then rules between keys)."""
    problems = value_problems(cfg) + rule_problems(cfg, plugin_names)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


# ---- unknown keys ------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    """`X` for `Optional[X]` / `X | None`; anything else unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def key_problem(path: list[str], root: type = TrainConfig) -> str | None:
    """Why the dotted key `path` is not in the schema (with the closest known key), or None if it is."""
    cls: Any = root
    for depth, part in enumerate(path):
        cls = _unwrap_optional(cls)
        origin = typing.get_origin(cls)
        if origin in (list, tuple) and part.isdigit():
            cls = typing.get_args(cls)[0] if typing.get_args(cls) else Any
            continue
        if origin in (dict, Mapping) or cls is Any:
            return None  # free-form mapping (stage scales, promotion rules)
        if not dataclasses.is_dataclass(cls):
            return f"{'.'.join(path)}: {'.'.join(path[:depth])} is a value, it has no key {part!r}"
        hints = _hints(cls)
        if part not in hints:
            where = ".".join(path[:depth]) or "the top level"
            close = difflib.get_close_matches(part, list(hints), n=1)
            hint = f" (did you mean {'.'.join([*path[:depth], close[0]])}?)" if close else ""
            return (f"{'.'.join(path)}: unknown key; {where} has no {part!r}{hint}. Every key is declared in "
                    "spacevista/configs/schema.py, and a '+' prefix does not add new ones")
        cls = hints[part]
    return None


def unknown_keys(node: Any, cls: Any = TrainConfig, prefix: str = "") -> list[str]:
    """Problems for every key of a composed config (`DictConfig` or plain containers) absent from the schema."""
    cls = _unwrap_optional(cls)
    origin = typing.get_origin(cls)
    if origin in (list, tuple) and isinstance(node, Iterable) and not isinstance(node, (str, Mapping)):
        inner = typing.get_args(cls)[0] if typing.get_args(cls) else Any
        return [p for i, item in enumerate(node) for p in unknown_keys(item, inner, f"{prefix}[{i}]")]
    if not dataclasses.is_dataclass(cls) or not isinstance(node, Mapping):
        return []
    hints, problems = _hints(cls), []
    for key in node:
        if prefix == "" and key == "hydra":
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            problems.append(f"{dotted}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
        else:
            problems += unknown_keys(node[key], hints[key], dotted)
    return problems


# ---- values ------------------------------------------------------------------------------------------
def value_problems(obj: Any, prefix: str = "") -> list[str]:
    """Every field outside its declared `limits` (range or choices), recursively, by dotted key."""
    problems: list[str] = []
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            problems += value_problems(item, f"{prefix}[{i}]")
        return problems
    if not dataclasses.is_dataclass(obj):
        return problems
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}.{f.name}" if prefix else f.name, getattr(obj, f.name)
        problems += value_problems(value, key)
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            problems.append(f"{key}={value!r}: must be one of {list(meta['choices'])}")
        if not any(k in meta for k in ("ge", "gt", "le")):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}={value!r}: must be a finite number")
        elif "ge" in meta and value < meta["ge"]:
            problems.append(f"{key}={value!r}: must be >= {meta['ge']}")
        elif "gt" in meta and value <= meta["gt"]:
            problems.append(f"{key}={value!r}: must be > {meta['gt']}")
        elif "le" in meta and value > meta["le"]:
            problems.append(f"{key}={value!r}: must be <= {meta['le']}")
    return problems


# ---- rules between keys ------------------------------------------------------------------------------
def rule_problems(cfg: TrainConfig, plugin_names: Iterable[str] = ()) -> list[str]:
    """Checks that need more than one key."""
    problems = []
    problems += layout_problems(cfg.model.experts, cfg.model.expert_of_scale)
    problems += dense_problems(cfg.model.dense)
    problems += _zero_weights("reward.weights", cfg.reward.weights)
    problems += _curriculum_problems(cfg, set(PROMOTION_METRICS) | set(plugin_names))
    world = cfg.cluster.learner.count
    per_step = cfg.rollout.prompts_per_step * cfg.rollout.n
    if per_step % world:
        problems.append(f"rollout.prompts_per_step * rollout.n = {per_step} must be divisible by "
                        f"cluster.learner.count = {world} (every learner rank takes an equal share)")
    if cfg.learner.sft.steps and cfg.learner.sft.batch_size % world:
        problems.append(f"learner.sft.batch_size = {cfg.learner.sft.batch_size} must be divisible by "
                        f"cluster.learner.count = {world}")
    if not cfg.learner.fsdp and world > 1:
        problems.append(f"learner.fsdp=false with cluster.learner.count={world}: ranks would train apart with no "
                        "gradient sync; set cluster.learner.count=1, or learner.fsdp=true")
    objective = cfg.learner.objective
    if cfg.rollout.n < 2 and objective.adv_estimator in ("grpo", "rloo"):
        problems.append(f"rollout.n = {cfg.rollout.n}: learner.objective.adv_estimator={objective.adv_estimator} "
                        "needs groups of >= 2")
    if cfg.rollout.top_p < 1:
        problems.append(f"rollout.top_p={cfg.rollout.top_p}: the rollout's log-probs would be renormalised over the "
                        "nucleus and the learner's are not, which biases every token's importance ratio; "
                        "sample with rollout.top_p=1.0 (temperature shapes the distribution for both)")
    low = objective.clip_ratio if objective.clip_ratio_low is None else objective.clip_ratio_low
    high = objective.clip_ratio if objective.clip_ratio_high is None else objective.clip_ratio_high
    if not 0 < low <= high:
        problems.append(f"learner.objective.clip_ratio_low={low}, clip_ratio_high={high}: need 0 < low <= high")
    optim = cfg.learner.optim
    horizon = optim.total_steps or cfg.steps
    if optim.schedule == "cosine" and optim.warmup_steps >= horizon:
        problems.append(f"learner.optim.warmup_steps={optim.warmup_steps} must be < the cosine horizon {horizon} "
                        "(learner.optim.total_steps, or steps when it is 0)")
    if cfg.cluster.num_cpus is not None and cfg.cluster.num_cpus < 1:
        problems.append(f"cluster.num_cpus={cfg.cluster.num_cpus}: must be >= 1 (or null: all CPUs)")
    specs = [p.spec for p in cfg.reward.plugins]
    for i, spec in enumerate(specs):
        if not spec.strip():
            problems.append(f"reward.plugins[{i}].spec: empty; give a registered name, module:function "
                            "or file.py:function")
    return problems


def weights_problems(key: str, weights: RewardWeights) -> list[str]:
    """Why stepwise reward weights cannot be used (each a finite number >= 0, not all 0), naming `key`."""
    return value_problems(weights, key) + _zero_weights(key, weights)


def _zero_weights(key: str, weights: RewardWeights) -> list[str]:
    if value_problems(weights, key):
        return []  # value_problems names the key
    return [] if weights.total_weight > 0 else [f"{key}: weights must not all be 0"]


def _curriculum_problems(cfg: TrainConfig, metrics: set[str]) -> list[str]:
    curriculum = cfg.curriculum
    if not curriculum.stages:
        return ["curriculum.stages: empty; give at least one stage (e.g. curriculum=mixed)"]
    problems = []
    for i, stage in enumerate(curriculum.stages):
        key = f"curriculum.stages[{i}]"
        bad = {s: w for s, w in stage.scales.items() if s not in SCALES or not (math.isfinite(w) and w >= 0)}
        if bad:
            problems.append(f"{key}.scales: {bad} are not known scales with weights >= 0; scales are {list(SCALES)}")
        elif sum(stage.scales.values()) <= 0:
            problems.append(f"{key}.scales: no scale has a weight > 0")
        served = expert_map(cfg.model.experts, cfg.model.expert_of_scale)
        missing = [s for s, w in stage.scales.items() if s in SCALES and w > 0 and s not in served]
        if missing:
            problems.append(f"{key}.scales: {missing} have no expert in model.experts (or model.expert_of_scale)")
        problems += _zero_weights(f"{key}.reward_weights", stage.reward_weights)
        if stage.max_steps is not None and stage.max_steps < max(1, stage.min_steps):
            problems.append(f"{key}.max_steps={stage.max_steps}: must be >= max(1, min_steps={stage.min_steps})")
        problems += _stage_plugin_problems(key, stage.plugin_weights, _plugin_names(cfg, metrics))
        for metric, threshold in stage.promote_when.items():
            if metric not in metrics:
                problems.append(f"{key}.promote_when.{metric}: unknown metric; choose from {sorted(metrics)}")
            elif not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
                problems.append(f"{key}.promote_when.{metric}={threshold!r}: a reward threshold in [0, 1]")
    return problems


def _plugin_names(cfg: TrainConfig, known: set[str]) -> set[str]:
    """Component names of the configured plugins: a registered name, or a spec's function name."""
    return {p.name or p.spec.rpartition(":")[2] for p in cfg.reward.plugins} | (known - set(PROMOTION_METRICS))


def _stage_plugin_problems(key: str, weights: Mapping[str, float], plugins: set[str]) -> list[str]:
    problems = []
    for name, weight in weights.items():
        if name not in plugins:
            problems.append(f"{key}.plugin_weights.{name}: no such plugin in reward.plugins {sorted(plugins)}")
        elif not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            problems.append(f"{key}.plugin_weights.{name}={weight!r}: a weight >= 0")
    return problems
