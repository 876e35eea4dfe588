"""Batch scoring: the main reward (stepwise by default) plus weighted plugins, configured by the
training config's `RewardConfig` (configs/schema.py, the one home of every reward key).

total = (W * main + sum_p w_p * plugin_p) / (W + sum_p w_p), where `main` is the stepwise total (or
the named reward's score) and W the sum of the stepwise weights (1 for a named reward); the breakdown's
`terms` keep each (weight, score) so the total can be recomputed without some of them.

Plugins are user code: each runs in its own process (`isolation.IsolatedReward`) with a deadline per
call. A call that times out, raises, exits or crashes is masked, not scored 0: that plugin's weight is
left out of that sample's total (its term's score is None; its component reads 0 with the reason), the
breakdown's `error` says so, it is counted per plugin (`error_counts`, `plugin_errors(breakdowns)`), and
its captured output (capped) goes to stderr. Masking one sample still leaves it normalised over other
terms than its GRPO group mates: `groups.group_totals` leaves a plugin that failed anywhere in a group
out of the whole group. (A failing named main reward is not masked: it scores 0.)
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spacevista.configs.schema import PluginConfig, RewardConfig, RewardWeights
from spacevista.rewards.isolation import IsolatedReward, PluginResult
from spacevista.rewards.registry import call_reward, load_reward
from spacevista.rewards.stepwise import (
    MAIN,
    RewardBreakdown,
    StepwiseReward,
    check_weights,
    error_breakdown,
    terms_total,
)
from spacevista.grammar.truth import GroundTruth, GroundTruthError, parse_ground_truth
from spacevista.scales import AnswerType

STEPWISE = "stepwise"
# Component names a plugin may not take: the stepwise components.
RESERVED_NAMES = frozenset({"format", "scale", *(t.value for t in AnswerType)})

# (ground truth in any shape parse_ground_truth accepts, completion, data_source, extra_info)
ScoreItem = tuple[Any, str, str, dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class _Plugin:
    name: str
    call: IsolatedReward | _InProcess
    weight: float


@dataclass(frozen=True, slots=True)
class _InProcess:
    """A trusted reward called directly (same result type as IsolatedReward, no deadline)."""

    fn: Any

    def __call__(self, *args: Any) -> PluginResult:
        return PluginResult(*call_reward(self.fn, *args))

    def close(self) -> None:
        pass


CONSECUTIVE_TIMEOUTS = 3  # a plugin timing out this often in a row is skipped for the rest of the batch
PRINTED_FAILURES = 3  # failing calls per plugin and batch whose captured output is printed


class RewardPipeline:
    """Scores batches of (ground truth, completion, data_source, extra_info). Plugins are loaded at
    construction (a bad spec raises PluginLoadError); a plugin failing on a sample (error, timeout,
    exit) is left out of that sample's total (see the module docstring), sets the breakdown's `error`
    and is counted in `error_counts`."""

    def __init__(self, config: RewardConfig | None = None, main: str = STEPWISE) -> None:
        """`main`: "stepwise", or a reward spec scored alone in its place (`rewards score --reward`)."""
        config = config if config is not None else RewardConfig()
        self.config = config
        self.stepwise = StepwiseReward(config.weights, config.neighbour_scale_credit)
        self.main: _Plugin | None = None
        if main != STEPWISE:
            self.main = _load_plugin(PluginConfig(main), config)
        taken = set(RESERVED_NAMES | {MAIN, self.main.name if self.main else STEPWISE})  # MAIN: the main term
        plugins = []
        for spec in config.plugins:
            plugin = _load_plugin(spec, config)
            if plugin.name in taken:
                raise ValueError(f"plugin {spec.spec!r}: component name {plugin.name!r} is taken; give it a name")
            taken.add(plugin.name)
            plugins.append(plugin)
        self.plugins = tuple(plugins)
        self.error_counts: Counter[str] = Counter()
        self._batch_errors: Counter[str] = Counter()
        self._timeouts_in_a_row: Counter[str] = Counter()
        self._plugin_weights: dict[str, float] = {}  # this stage's plugin weights (set_weights)

    def close(self) -> None:
        """Stop the plugins' processes (they also stop when this process exits)."""
        for plugin in (*self.plugins, *([self.main] if self.main else [])):
            plugin.call.close()

    def set_weights(self, weights: RewardWeights, plugins: Mapping[str, float] | None = None) -> None:
        """Use these stepwise weights and gates from the next sample on (per curriculum stage); `plugins`
        {name: weight} re-weights those plugins for the stage (the rest, and all without it, keep their
        config weight)."""
        plugins = dict(plugins or {})
        unknown = sorted(set(plugins) - {p.name for p in self.plugins})
        if unknown:
            raise ValueError(f"stage weights name plugins {unknown} that are not configured "
                             f"({[p.name for p in self.plugins]})")
        self.stepwise.weights = check_weights(weights)
        self._plugin_weights = {name: float(w) for name, w in plugins.items()}

    def score_batch(self, items: Iterable[ScoreItem]) -> list[RewardBreakdown]:
        """One breakdown per item, in order. Consecutive items with the same ground truth (a GRPO
        prompt group) share one parse of it."""
        breakdowns: list[RewardBreakdown] = []
        previous_raw: Any = _UNSET
        truth: GroundTruth | GroundTruthError = GroundTruthError("unset")
        self._batch_errors.clear()
        self._timeouts_in_a_row.clear()
        for raw, completion, data_source, extra_info in items:
            if raw is not previous_raw and raw != previous_raw:
                truth = _parse_or_error(raw)
                previous_raw = raw
            breakdowns.append(self._score(truth, raw, completion, data_source, extra_info))
        self._warn(len(breakdowns))
        return breakdowns

    def _warn(self, n: int) -> None:
        for name, errors in self._batch_errors.items():
            if n and errors / n > self.config.warn_error_rate:
                print(f"warning: reward plugin {name!r} failed on {errors} of {n} samples in this batch "
                      f"(left out of those samples' totals)", file=sys.stderr, flush=True)

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
            breakdown.total = breakdown.components[self.main.name]  # 0 where it failed: not masked
            base_weight = 1.0
        breakdown.terms[MAIN] = (base_weight, breakdown.total)
        if not self.plugins:
            return breakdown
        for plugin in self.plugins:
            weight = self._plugin_weights.get(plugin.name, plugin.weight)
            breakdown.terms[plugin.name] = (
                weight, self._run_plugin(plugin, breakdown, raw, completion, data_source, extra_info))
        breakdown.total = terms_total(breakdown.terms)
        return breakdown

    def _run_plugin(self, plugin: _Plugin, breakdown: RewardBreakdown, raw: Any, completion: str,
                    data_source: str, extra_info: dict[str, Any] | None) -> float | None:
        """Call `plugin` and record its component and reason in `breakdown`: its score, None if it failed."""
        if self._timeouts_in_a_row[plugin.name] >= CONSECUTIVE_TIMEOUTS:
            result = PluginResult(0.0, f"skipped: timed out {CONSECUTIVE_TIMEOUTS} times in a row in this batch")
        else:
            result = plugin.call(data_source, completion, raw, extra_info)
            timed_out = result.error is not None and result.error.startswith("timed out")
            self._timeouts_in_a_row[plugin.name] = self._timeouts_in_a_row[plugin.name] + 1 if timed_out else 0
        breakdown.components[plugin.name] = result.score
        breakdown.reasons[plugin.name] = result.error or "ok"
        if result.error is not None:
            self.error_counts[plugin.name] += 1
            self._batch_errors[plugin.name] += 1
            message = f"plugin {plugin.name!r} {result.error}"
            breakdown.error = message if breakdown.error is None else f"{breakdown.error}; {message}"
            if result.output and self._batch_errors[plugin.name] <= PRINTED_FAILURES:
                print(f"reward plugin {plugin.name!r} {result.error}; its output:\n{result.output}",
                      file=sys.stderr, flush=True)
        return result.score if result.error is None else None


_UNSET = object()


def _load_plugin(plugin: PluginConfig, config: RewardConfig) -> _Plugin:
    if not (isinstance(plugin.weight, (int, float)) and math.isfinite(plugin.weight) and plugin.weight >= 0):
        raise ValueError(f"plugin {plugin.spec!r}: weight must be a finite number >= 0, got {plugin.weight!r}")
    name, fn = load_reward(plugin.spec)
    name = plugin.name or name
    trusted = getattr(fn, "__module__", "").startswith("spacevista.rewards.")  # our built-ins
    call = (_InProcess(fn) if trusted or not config.isolate_plugins
            else IsolatedReward(name, fn, config.plugin_timeout_s, config.plugin_output_bytes))
    return _Plugin(name, call, plugin.weight)


def plugin_errors(breakdowns: Iterable[RewardBreakdown]) -> dict[str, int]:
    """{plugin name: samples where it failed} over `breakdowns` (0 for plugins that never failed):
    what the controller logs as `reward/plugin_errors/<name>`."""
    counts: Counter[str] = Counter()
    for b in breakdowns:
        for name in b.components.keys() - RESERVED_NAMES:
            counts[name] += b.reasons.get(name, "ok") != "ok"
    return dict(counts)


def _parse_or_error(raw: Any) -> GroundTruth | GroundTruthError:
    try:
        return parse_ground_truth(raw)
    except GroundTruthError as err:
        return err
