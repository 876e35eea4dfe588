"""Reward components: each returns (value in [0, 1], reason).

Mean Relative Accuracy (MRA) lives here, with its thresholds: the fraction of t in MRA_THRESHOLDS
with |pred - gt| / |gt| <= 1 - t.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from spacevista.grammar.parse import (
    ParsedCompletion,
    normalise_text,
    parse_choice,
    parse_count,
    parse_quantity,
    parse_scale,
)
from spacevista.grammar.truth import GroundTruth
from spacevista.scales import SCALES, AnswerType, convert, unit_dimension

Component = tuple[float, str]

MRA_THRESHOLDS: tuple[float, ...] = tuple(p / 100 for p in range(50, 100, 5))  # 0.50, 0.55, ..., 0.95
# Tolerances 1 - t, ascending, rounded so that 1 - 0.55 is 0.45 and not 0.44999999999999996.
_MRA_TOLERANCES: tuple[float, ...] = tuple(sorted(round(1 - t, 12) for t in MRA_THRESHOLDS))
# A relative error this close above a tolerance still counts as within it: decimal answers and unit
# factors are not exact in binary (|1.1 - 1.0| / 1.0 is 0.10000000000000009, which must pass t = 0.9).
MRA_EPSILON = 1e-9
# With gt == 0 the relative error is undefined: a prediction scores 1 when |pred| <= this, else 0.
MRA_ZERO_TOLERANCE = 1e-9
COUNT_EXACT_MAX = 10  # counts up to this are scored exactly, larger ones by MRA


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """MRA of `pred` against `gt` (same unit); gt == 0 scores 1 only when |pred| <= MRA_ZERO_TOLERANCE."""
    if gt == 0:
        return 1.0 if abs(pred) <= MRA_ZERO_TOLERANCE else 0.0
    relative_error = abs(pred - gt) / abs(gt)
    if relative_error != relative_error:  # a nan prediction; bisect would rank nan as within every tolerance
        return 0.0
    below = bisect_left(_MRA_TOLERANCES, relative_error - MRA_EPSILON)
    return (len(_MRA_TOLERANCES) - below) / len(_MRA_TOLERANCES)


def format_reward(parsed: ParsedCompletion) -> Component:
    """1 when the completion is exactly think -> scale -> answer (see parse._format_error)."""
    return (1.0, "ok") if parsed.format_error is None else (0.0, parsed.format_error)


def scale_reward(scale_text: str | None, truth_scale: str, neighbour_credit: float = 0.0) -> Component:
    """1 for the record's scale; `neighbour_credit` for an adjacent scale in scales.SCALES order."""
    predicted = parse_scale(scale_text)
    if not predicted:
        return 0.0, predicted.reason
    if predicted == truth_scale:
        return 1.0, "ok"
    if abs(SCALES.index(predicted) - SCALES.index(truth_scale)) == 1:
        return neighbour_credit, f"neighbouring scale {predicted} (truth {truth_scale})"
    return 0.0, f"scale {predicted} (truth {truth_scale})"


def quantity_in_truth_unit(answer: str | None, truth: GroundTruth) -> float | str:
    """The predicted quantity converted to the record's unit (a bare number is taken to be in it), or
    the reason there is none (a str)."""
    parsed = parse_quantity(answer)
    if not parsed:
        return parsed.reason
    value, unit = parsed
    if unit is not None and unit != truth.unit:
        if unit_dimension(unit) != unit_dimension(truth.unit):
            return f"unit {unit} does not measure what {truth.unit} does"
        value = convert(value, unit, truth.unit)
    return value


def numeric_reward(answer: str | None, truth: GroundTruth) -> Component:
    """MRA of the predicted quantity in the record's unit."""
    value = quantity_in_truth_unit(answer, truth)
    if isinstance(value, str):
        return 0.0, value
    score = mean_relative_accuracy(value, truth.value)
    return score, f"{value:.4g} vs {truth.value:.4g} {truth.unit}"


def choice_reward(answer: str | None, truth: GroundTruth) -> Component:
    """1 for the record's letter."""
    letter = parse_choice(answer, truth.choices)
    if not letter:
        return 0.0, letter.reason
    return (1.0, "ok") if letter == truth.value else (0.0, f"{letter} vs {truth.value}")


def count_reward(answer: str | None, truth: GroundTruth, exact_max: int = COUNT_EXACT_MAX) -> Component:
    """Exact match for counts up to `exact_max`, MRA above it."""
    count = parse_count(answer)
    if not isinstance(count, int):
        return 0.0, count.reason
    if truth.value > exact_max:
        return mean_relative_accuracy(count, truth.value), f"{count} vs {truth.value} (MRA)"
    return (1.0, "ok") if count == truth.value else (0.0, f"{count} vs {truth.value}")


def text_reward(answer: str | None, truth: GroundTruth) -> Component:
    """1 when the normalised answer equals the normalised truth."""
    if answer is None:
        return 0.0, "no <answer> block"
    return (1.0, "ok") if normalise_text(answer) == truth.value else (0.0, "text differs")


AccuracyReward = Callable[[str | None, GroundTruth], Component]
ACCURACY_REWARDS: dict[AnswerType, AccuracyReward] = {
    AnswerType.NUMERIC: numeric_reward,
    AnswerType.CHOICE: choice_reward,
    AnswerType.COUNT: count_reward,
    AnswerType.TEXT: text_reward,
}
