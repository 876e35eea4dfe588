"""The stepwise reward: format, then scale, then the answer, combined with weights and gates, and
its verl entry point `compute_score`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from spacevista.rewards.components import (
    ACCURACY_REWARDS,
    COUNT_EXACT_MAX,
    AccuracyReward,
    count_reward,
    format_reward,
    scale_reward,
)
from spacevista.grammar.parse import parse_completion
from spacevista.grammar.truth import GroundTruth, GroundTruthError, parse_ground_truth
from spacevista.configs.checks import weights_problems
from spacevista.configs.schema import RewardWeights
from spacevista.scales import AnswerType, OutputFormat

ACCURACY = "accuracy"  # the key under which compute_score reports the answer component


def check_weights(weights: RewardWeights) -> RewardWeights:
    """`weights` if usable (each a finite number >= 0, not all 0), else ValueError naming the bad one."""
    problems = weights_problems("weights", weights)
    if problems:
        raise ValueError("; ".join(problems))
    return weights


# {term: (weight, score)}: what a total is the weighted mean of; score None = the call failed (left out)
Terms = dict[str, tuple[float, float | None]]
MAIN = "main"  # the term of the main reward (stepwise, or the named reward in its place)


@dataclass(slots=True)
class RewardBreakdown:
    """One sample's reward: `total` in [0, 1] and each component (`format`, `scale`, the answer
    type's `numeric`/`choice`/`count`/`text`, then plugins by name) with the reason for its value.

    `terms` (set by the batch pipeline, empty otherwise) is what `total` is the weighted mean of:
    {"main": (W, main score), plugin: (weight, score or None where the call failed)}, so that a total
    can be recomputed without some terms (`terms_total`, rewards/groups.py)."""

    total: float
    components: dict[str, float]
    reasons: dict[str, str]
    scale: str | None
    task: str | None
    error: str | None = None
    terms: Terms = field(default_factory=dict)


def terms_total(terms: Terms, leave_out: Collection[str] = ()) -> float:
    """The weighted mean of `terms`' scores, clipped to [0, 1], without the terms in `leave_out` and
    those that failed (score None); 0 if no weight is left. The pipeline's total is this with nothing
    left out, so a recomputation over the same terms is bit-for-bit the same."""
    weighted = weight_sum = 0.0
    for name, (weight, score) in terms.items():
        if score is not None and name not in leave_out:
            weighted += weight * score
            weight_sum += weight
    return min(1.0, max(0.0, weighted / weight_sum)) if weight_sum > 0 else 0.0


def error_breakdown(error: str) -> RewardBreakdown:
    """A sample that could not be scored: total 0 and the reason."""
    return RewardBreakdown(0.0, {}, {}, None, None, error)


@dataclass(slots=True)
class StepwiseReward:
    """Scores completions against ground truths with the current `weights` (replace them between
    steps as the curriculum says; they are read once per sample)."""

    weights: RewardWeights = field(default_factory=RewardWeights)
    neighbour_scale_credit: float = 0.0  # scale credit for a scale adjacent to the record's
    count_exact_max: int = COUNT_EXACT_MAX
    _accuracy: dict[AnswerType, AccuracyReward] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_weights(self.weights)
        if not 0.0 <= self.neighbour_scale_credit <= 1.0:
            raise ValueError(f"neighbour_scale_credit must be in [0, 1], got {self.neighbour_scale_credit!r}")
        self._accuracy = {**ACCURACY_REWARDS,
                          AnswerType.COUNT: partial(count_reward, exact_max=self.count_exact_max)}

    def score(self, truth: GroundTruth, completion: str) -> RewardBreakdown:
        """Score one completion against a parsed ground truth. Where the dataset's output format
        makes <scale> optional and the completion has none, the scale component is left out and the
        total is normalised over format and answer."""
        weights = self.weights
        parsed = parse_completion(completion, truth.output_format)
        format_value, format_reason = format_reward(parsed)
        scale_scored = parsed.scale is not None or truth.output_format is OutputFormat.THINK_SCALE_ANSWER
        scale_value, scale_reason = scale_reward(parsed.scale, truth.scale, self.neighbour_scale_credit)
        if weights.gate_format and format_value < 1.0:
            accuracy, accuracy_reason = 0.0, "gated: format invalid"
        elif weights.gate_scale and scale_scored and scale_value < 1.0:
            accuracy, accuracy_reason = 0.0, "gated: scale not right"
        elif truth.type is AnswerType.COUNT and truth.count_metric == "mra":
            accuracy, accuracy_reason = count_reward(parsed.answer, truth, exact_max=-1)
        else:
            accuracy, accuracy_reason = self._accuracy[truth.type](parsed.answer, truth)
        name = truth.type.value
        components = {"format": format_value, name: accuracy}
        reasons = {"format": format_reason, name: accuracy_reason}
        weighted = weights.format * format_value + weights.accuracy * accuracy
        total_weight = weights.format + weights.accuracy
        if scale_scored:
            components["scale"], reasons["scale"] = scale_value, scale_reason
            weighted += weights.scale * scale_value
            total_weight += weights.scale
        total = min(1.0, weighted / total_weight) if total_weight > 0 else 0.0
        return RewardBreakdown(total, components, reasons, truth.scale, truth.task)


DEFAULT_STEPWISE = StepwiseReward()


def compute_score(data_source: str, solution_str: str, ground_truth: dict[str, Any] | str,
                  extra_info: dict[str, Any] | None = None, **verl_kwargs: Any) -> dict[str, Any]:
    """verl `custom_reward_function`: the stepwise reward with default weights.

    The dict has the same keys for every sample, as verl stacks them across the batch: `score`,
    `format`, `scale`, `accuracy` (the answer component), `answer_type` and `error` ("" if none).
    `verl_kwargs` (reward-router arguments verl may pass) are not used.
    """
    try:
        truth = parse_ground_truth(ground_truth)
    except GroundTruthError as err:
        return {"score": 0.0, "format": 0.0, "scale": 0.0, ACCURACY: 0.0, "answer_type": "",
                "error": f"ground truth: {err}"}
    breakdown = DEFAULT_STEPWISE.score(truth, solution_str)
    name = truth.type.value
    return {"score": breakdown.total, "format": breakdown.components["format"],
            "scale": breakdown.components.get("scale", 0.0),
            ACCURACY: breakdown.components[name], "answer_type": name, "error": ""}


def aggregate_breakdowns(breakdowns: Iterable[RewardBreakdown], by: str = "scale") -> dict[str, dict[str, float]]:
    """Means of `total` and of each component per group (`by` = "scale" or "task") and over "all",
    with `n` samples and `errors` (samples with an error) per group: rows of a logging table."""
    if by not in ("scale", "task"):
        raise ValueError(f"aggregate by 'scale' or 'task', not {by!r}")
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for breakdown in breakdowns:
        for group in (getattr(breakdown, by) or "unknown", "all"):
            group_sums, group_counts = sums[group], counts[group]
            group_counts["n"] += 1
            group_counts["errors"] += breakdown.error is not None
            group_sums["total"] += breakdown.total
            group_counts["total"] += 1
            for name, value in breakdown.components.items():
                group_sums[name] += value
                group_counts[name] += 1
    return {group: {"n": float(counts[group]["n"]), "errors": float(counts[group]["errors"]),
                    **{name: total / counts[group][name] for name, total in sums[group].items()}}
            for group in sums}
