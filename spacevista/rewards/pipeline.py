"""Batch scoring: the main reward (stepwise by default) plus weighted plugins, configured by data.

total = (W * main + sum_p w_p * plugin_p) / (W + sum_p w_p), where `main` is the stepwise total (or
the named reward's score) and W the sum of the stepwise weights (1 for a named reward).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from spacevista.rewards.components import COUNT_EXACT_MAX
from spacevista.rewards.registry import RewardFn, call_reward, load_reward
from spacevista.rewards.stepwise import (
    RewardBreakdown,
    RewardWeights,
    StepwiseReward,
    error_breakdown,
)
from spacevista.rewards.truth import GroundTruth, GroundTruthError, parse_ground_truth
from spacevista.scales import AnswerType

STEPWISE = "stepwise"
# Component names a plugin may not take: the stepwise components.
RESERVED_NAMES = frozenset({"format", "scale", *(t.value for t in AnswerType)})

# (ground truth in any shape parse_ground_truth accepts, completion, data_source, extra_info)
ScoreItem = tuple[Any, str, str, dict[str, Any] | None]


@dataclass(frozen=True)
class PluginSpec:
    """A plugin reward: `spec` as load_reward takes it, its weight in the total, and its component
    name (default: the registered name or the function's name)."""

    spec: str
    weight: float = 1.0
    name: str | None = None


@dataclass(frozen=True)
class RewardConfig:
    """What a RewardPipeline is built from."""

    reward: str = STEPWISE  # "stepwise", or any reward spec scored alone
    weights: RewardWeights = field(default_factory=RewardWeights)
    neighbour_scale_credit: float = 0.0
    count_exact_max: int = COUNT_EXACT_MAX
    plugins: tuple[PluginSpec, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RewardConfig:
        """From plain data: `weights` a mapping of RewardWeights fields, `plugins` a list of spec
        strings or PluginSpec mappings. Unknown keys raise ValueError naming them."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown reward config keys {sorted(unknown)}")
        values = dict(raw)
        if isinstance(values.get("weights"), Mapping):
            values["weights"] = RewardWeights(**values["weights"])
        values["plugins"] = tuple(PluginSpec(p) if isinstance(p, str) else p if isinstance(p, PluginSpec)
                                  else PluginSpec(**p) for p in values.get("plugins", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class _Plugin:
    name: str
    fn: RewardFn
    weight: float


class RewardPipeline:
    """Scores batches of (ground truth, completion, data_source, extra_info). Plugins are loaded at
    construction (a bad spec raises PluginLoadError); a plugin failing on a sample scores 0 there,
    sets the breakdown's `error` and is counted in `error_counts`."""

    def __init__(self, config: RewardConfig | Mapping[str, Any] = RewardConfig()) -> None:
        if not isinstance(config, RewardConfig):
            config = RewardConfig.from_dict(config)
        self.config = config
        self.stepwise = StepwiseReward(config.weights, config.neighbour_scale_credit, config.count_exact_max)
        self.main: _Plugin | None = None
        if config.reward != STEPWISE:
            name, fn = load_reward(config.reward)
            self.main = _Plugin(name, fn, 1.0)
        taken = set(RESERVED_NAMES | {self.main.name if self.main else STEPWISE})
        plugins = []
        for spec in config.plugins:
            plugin = _load_plugin(spec)
            if plugin.name in taken:
                raise ValueError(f"plugin {spec.spec!r}: component name {plugin.name!r} is taken; give it a name")
            taken.add(plugin.name)
            plugins.append(plugin)
        self.plugins = tuple(plugins)
        self.error_counts: Counter[str] = Counter()

    def set_weights(self, weights: RewardWeights | Mapping[str, Any]) -> None:
        """Use these stepwise weights and gates from the next sample on (per curriculum stage)."""
        self.stepwise.weights = weights if isinstance(weights, RewardWeights) else RewardWeights(**weights)

    def score_batch(self, items: Iterable[ScoreItem]) -> list[RewardBreakdown]:
        """One breakdown per item, in order. Consecutive items with the same ground truth (a GRPO
        prompt group) share one parse of it."""
        breakdowns: list[RewardBreakdown] = []
        previous_raw: Any = _UNSET
        truth: GroundTruth | GroundTruthError = GroundTruthError("unset")
        for raw, completion, data_source, extra_info in items:
            if raw is not previous_raw and raw != previous_raw:
                truth = _parse_or_error(raw)
                previous_raw = raw
            breakdowns.append(self._score(truth, raw, completion, data_source, extra_info))
        return breakdowns

    def _score(self, truth: GroundTruth | GroundTruthError, raw: Any, completion: str, data_source: str,
               extra_info: dict[str, Any] | None) -> RewardBreakdown:
        if isinstance(truth, GroundTruthError):
            return error_breakdown(f"ground truth: {truth}")
        if self.main is None:
            breakdown = self.stepwise.score(truth, completion)
            base_weight = self.stepwise.weights.total_weight
        else:
            breakdown = RewardBreakdown(0.0, {}, {}, truth.scale, truth.task)
            self._run_plugin(self.main, breakdown, raw, completion, data_source, extra_info)
            breakdown.total = breakdown.components[self.main.name]
            base_weight = 1.0
        if not self.plugins:
            return breakdown
        weighted, weight_sum = breakdown.total * base_weight, base_weight
        for plugin in self.plugins:
            weighted += plugin.weight * self._run_plugin(plugin, breakdown, raw, completion, data_source, extra_info)
            weight_sum += plugin.weight
        breakdown.total = min(1.0, weighted / weight_sum)
        return breakdown

    def _run_plugin(self, plugin: _Plugin, breakdown: RewardBreakdown, raw: Any, completion: str,
                    data_source: str, extra_info: dict[str, Any] | None) -> float:
        score, error = call_reward(plugin.fn, data_source, completion, raw, extra_info)
        breakdown.components[plugin.name] = score
        breakdown.reasons[plugin.name] = error or "ok"
        if error is not None:
            self.error_counts[plugin.name] += 1
            message = f"plugin {plugin.name!r} {error}"
            breakdown.error = message if breakdown.error is None else f"{breakdown.error}; {message}"
        return score


_UNSET = object()


def _load_plugin(plugin: PluginSpec) -> _Plugin:
    if not (isinstance(plugin.weight, (int, float)) and math.isfinite(plugin.weight) and plugin.weight >= 0):
        raise ValueError(f"plugin {plugin.spec!r}: weight must be a finite number >= 0, got {plugin.weight!r}")
    name, fn = load_reward(plugin.spec)
    return _Plugin(plugin.name or name, fn, plugin.weight)


def _parse_or_error(raw: Any) -> GroundTruth | GroundTruthError:
    try:
        return parse_ground_truth(raw)
    except GroundTruthError as err:
        return err
