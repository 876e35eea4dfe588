"""Score benchmark answers the SpaceVista-Bench way, with the rewards' parsers and accuracy components.

Per answer type (the bench's `answer_type` spelling first):
- `mc` (choice): exact match of the choice letter (`rewards.components.choice_reward`).
- `numerical` (numeric): Mean Relative Accuracy over thresholds 0.50, 0.55, ..., 0.95
  (`numeric_reward` / `mean_relative_accuracy`). A ground truth with a unit ("3.2 m") converts the
  prediction's unit to it (a bare predicted number is taken in the ground truth's unit; a unit of
  another dimension scores 0). A bare ground-truth number ("40", the public bench's form) reads the
  prediction as a bare number in the same unit: its unit, if any, is ignored, as in the bench's own
  scorer; number words ("three") count.
- `text`: exact match after `rewards.parse.normalise_text` (`text_reward`).
- `count` (our records' count tasks; the public bench files counting under `numerical`): the
  rewards' count component, exact up to COUNT_EXACT_MAX, MRA above.

The answer is the content of the last `<answer>` block, or the whole prediction when it has none
(the bench's rule). Pure Python: no torch, no ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacevista.rewards.components import ACCURACY_REWARDS, mean_relative_accuracy
from spacevista.rewards.parse import normalise_text, parse_choice, parse_completion, parse_count, parse_quantity
from spacevista.rewards.truth import GroundTruth
from spacevista.scales import SCALE_BY_NAME, AnswerType, canonical_scale

# The bench's `answer_type` values and ours (`count` is our extension).
BENCH_ANSWER_TYPES: dict[str, AnswerType] = {"mc": AnswerType.CHOICE, "numerical": AnswerType.NUMERIC,
                                             "text": AnswerType.TEXT, "count": AnswerType.COUNT}
BENCH_NAME: dict[AnswerType, str] = {t: name for name, t in BENCH_ANSWER_TYPES.items()}


@dataclass(frozen=True)
class EvalSample:
    """One benchmark question with the model's raw output. `truth.unit` is None for a bare-number
    numeric ground truth; `routed_expert` is the expert that answered (None: no expert)."""

    id: str
    scale: str
    task: str
    truth: GroundTruth
    ground_truth: str  # as the benchmark states it
    prediction: str
    routed_expert: str | None = None

    @property
    def category(self) -> str:
        """The bench's spelling of the scale ("TinyTabletop")."""
        return SCALE_BY_NAME[self.scale].bench_category


@dataclass(frozen=True)
class ScoredSample:
    sample: EvalSample
    parsed: str | None  # the answer as parsed ("B", "3.2 m", "kitchen"); None when nothing parsed
    score: float
    reason: str


@dataclass(frozen=True)
class Malformed:
    """A predictions-file line that could not be scored."""

    line: int
    error: str


def extract_answer(prediction: str) -> str:
    """The last complete <answer> block's content, else the whole prediction."""
    answer = parse_completion(prediction).answer
    return prediction if answer is None else answer


def _bare_number(answer: str) -> float | None:
    quantity = parse_quantity(answer)
    if quantity:
        return quantity[0]
    count = parse_count(answer)  # number words: "three"
    return float(count) if isinstance(count, int) else None


def parse_answer(answer: str, truth: GroundTruth) -> str | None:
    """The answer as the scorer reads it, for the results file."""
    if truth.type is AnswerType.CHOICE:
        letter = parse_choice(answer, truth.choices)
        return letter or None
    if truth.type is AnswerType.COUNT:
        count = parse_count(answer)
        return str(count) if isinstance(count, int) else None
    if truth.type is AnswerType.TEXT:
        return normalise_text(answer)
    if truth.unit is None:
        value = _bare_number(answer)
        return None if value is None else f"{value:g}"
    quantity = parse_quantity(answer)
    if not quantity:
        return None
    value, unit = quantity
    return f"{value:g} {unit}" if unit else f"{value:g}"


def score_sample(sample: EvalSample) -> ScoredSample:
    """Score one sample (see the module docstring)."""
    truth, answer = sample.truth, extract_answer(sample.prediction)
    if truth.type is AnswerType.NUMERIC and truth.unit is None:
        value = _bare_number(answer)
        score, reason = ((0.0, f"no number in {answer[:40]!r}") if value is None else
                         (mean_relative_accuracy(value, float(truth.value)), f"{value:.4g} vs {truth.value:.4g}"))
    else:
        score, reason = ACCURACY_REWARDS[truth.type](answer, truth)
    return ScoredSample(sample, parse_answer(answer, truth), score, reason)


# ---- the SpaceVista-Bench results layout --------------------------------------------------------
def result_row(scored: ScoredSample) -> dict[str, Any]:
    """One `results.jsonl` row: the bench's fields (so `eval score` reads the file back as is) plus
    the scale, the parsed answer, the score with its reason and the routed expert."""
    sample, truth = scored.sample, scored.sample.truth
    row = {"id": sample.id, "category": sample.category, "scale": sample.scale, "original_type": sample.task,
           "answer_type": BENCH_NAME[truth.type], "ground_truth": sample.ground_truth,
           "predicted_answer": sample.prediction, "parsed_answer": scored.parsed, "score": scored.score,
           "reason": scored.reason, "routed_expert": sample.routed_expert}
    if truth.choices:
        row["choices"] = list(truth.choices)
    return row


class _LineError(ValueError):
    pass


def bench_truth(answer_type: AnswerType, ground_truth: str, scale: str, task: str,
                choices: tuple[str, ...] | None = None) -> GroundTruth:
    """A ground truth as the bench states it (a string), normalised; raises ValueError if unusable."""
    if answer_type is AnswerType.CHOICE:
        letter = parse_choice(ground_truth, choices)
        if not letter:
            raise _LineError(f"mc ground truth {ground_truth!r} is not a choice letter")
        return GroundTruth(scale, task, answer_type, letter, None, choices)
    if answer_type is AnswerType.COUNT:
        count = parse_count(ground_truth)
        if not isinstance(count, int):
            raise _LineError(f"count ground truth {ground_truth!r}: {count.reason}")
        return GroundTruth(scale, task, answer_type, count)
    if answer_type is AnswerType.TEXT:
        text = normalise_text(ground_truth)
        if not text:
            raise _LineError(f"text ground truth {ground_truth!r} is empty")
        return GroundTruth(scale, task, answer_type, text)
    quantity = parse_quantity(ground_truth)
    if not quantity:
        raise _LineError(f"numerical ground truth {ground_truth!r}: {quantity.reason}")
    return GroundTruth(scale, task, answer_type, quantity[0], quantity[1])


def _text(row: dict[str, Any], key: str, *, numbers: bool = False) -> str:
    if key not in row:
        raise _LineError(f"missing field {key!r}")
    value = row[key]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _LineError(f"field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def sample_from_row(row: dict[str, Any], line: int) -> EvalSample:
    """An EvalSample from one bench results object (raises ValueError naming what is wrong).

    Required: predicted_answer (string; null = no output, scores 0), ground_truth (string or
    number), answer_type, category, original_type. Optional: id, routed_expert, choices.
    """
    if "predicted_answer" not in row:
        raise _LineError("missing field 'predicted_answer'")
    prediction = row["predicted_answer"]
    if prediction is not None and not isinstance(prediction, str):
        raise _LineError(f"field 'predicted_answer' must be a string or null, got {type(prediction).__name__}")
    answer_type = BENCH_ANSWER_TYPES.get(_text(row, "answer_type"))
    if answer_type is None:
        raise _LineError(f"answer_type {row['answer_type']!r} is not one of {sorted(BENCH_ANSWER_TYPES)}")
    scale = canonical_scale(_text(row, "category"))
    if scale is None:
        raise _LineError(f"unknown category {row['category']!r}")
    task = _text(row, "original_type")
    choices = row.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise _LineError("field 'choices' must be a list of strings")
    ground_truth = _text(row, "ground_truth", numbers=True)
    truth = bench_truth(answer_type, ground_truth, scale, task, tuple(choices) if choices else None)
    routed = row.get("routed_expert")
    return EvalSample(id=str(row.get("id", f"line-{line}")), scale=scale, task=task, truth=truth,
                      ground_truth=ground_truth, prediction=prediction or "",
                      routed_expert=routed if isinstance(routed, str) else None)


def read_predictions(path: str | Path) -> tuple[list[EvalSample], list[Malformed]]:
    """Every non-blank line of a bench results JSONL file: the samples, and the lines that are not
    (1-based line numbers, with the reason). Extra fields are ignored."""
    samples: list[EvalSample] = []
    malformed: list[Malformed] = []
    for line, text in _lines(Path(path)):
        try:
            row = json.loads(text)
            if not isinstance(row, dict):
                raise _LineError(f"a JSON {type(row).__name__}, not an object")
            samples.append(sample_from_row(row, line))
        except json.JSONDecodeError as err:
            malformed.append(Malformed(line, f"invalid JSON: {err}"))
        except _LineError as err:
            malformed.append(Malformed(line, str(err)))
    return samples, malformed


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if text.strip():
                yield n, text
