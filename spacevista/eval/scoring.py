"""Score benchmark answers the SpaceVista-Bench way, with the answer grammar and the rewards' accuracy components.

Per answer type (the bench's `answer_type` spelling first):
- `mc` (choice): exact match of the choice letter (`rewards.components.choice_reward`).
- `numerical` (numeric): Mean Relative Accuracy over thresholds 0.50, 0.55, ..., 0.95
  (`numeric_reward` / `mean_relative_accuracy`). A ground truth with a unit ("3.2 m") converts the
  prediction's unit to it (a bare predicted number is taken in the ground truth's unit; a unit of
  another dimension scores 0). A bare ground-truth number ("40", the public bench's form) reads the
  prediction as a bare number in the same unit: its unit, if any, is ignored, as in the bench's own
  scorer; number words ("three") count.
- `text`: exact match after `grammar.parse.normalise_text` (`text_reward`).
- `count` (our records' count tasks; the public bench files counting under `numerical`): the
  rewards' count component, exact up to COUNT_EXACT_MAX, MRA above.

The answer is the content of the last `<answer>` block, or the whole prediction when it has none.
This is the *lenient* reading (`--reading lenient`); the default is the official scorer's reading
(eval/official.py). `read_results` reads a results file both ways and lists the rows where the two
differ. Pure Python: no torch, no ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacevista.eval.official import (CHOICE_TYPES, NUMERIC_TYPES, OfficialResult, OfficialRow, Skipped,
                                      classify_answer_type, read_lines, score_lines)
from spacevista.rewards.components import ACCURACY_REWARDS, mean_relative_accuracy
from spacevista.grammar.parse import normalise_text, parse_choice, parse_completion, parse_count, parse_quantity
from spacevista.grammar.truth import GroundTruth
from spacevista.scales import SCALE_BY_NAME, AnswerType, canonical_scale

# The bench's `answer_type` values and ours (`count` is our extension).
BENCH_ANSWER_TYPES: dict[str, AnswerType] = {"mc": AnswerType.CHOICE, "numerical": AnswerType.NUMERIC,
                                             "text": AnswerType.TEXT, "count": AnswerType.COUNT}
BENCH_NAME: dict[AnswerType, str] = {t: name for name, t in BENCH_ANSWER_TYPES.items()}


@dataclass(frozen=True)
class EvalSample:
    """One benchmark question with the model's raw output. `truth.unit` is None for a bare-number
    numeric ground truth; `routed_expert` is the expert that answered (None: no expert). The last four
    fields fill the bench's results layout: `original_type` is the source's task spelling (default:
    `task`), `num_frames` the frames sent with the question."""

    id: str
    scale: str
    task: str
    truth: GroundTruth
    ground_truth: str  # as the benchmark states it
    prediction: str
    routed_expert: str | None = None
    input_type: str = "image_text"
    question: str = ""
    original_type: str | None = None
    num_frames: int = 0

    @property
    def category(self) -> str:
        """The bench's spelling of the scale ("TinyTabletop")."""
        return SCALE_BY_NAME[self.scale].bench_category

    @property
    def scale_symbol(self) -> str | None:
        """The bench's `scale` field ("mm", "cm", "m", "<km"); None for a scale the bench lacks."""
        return getattr(SCALE_BY_NAME[self.scale], "symbol", None)


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
    """One `results.jsonl` row: the official results layout (id .. num_frames_sent, with the official
    `answer_type` of the ground truth), then ours: `truth_type` (the answer type our records declare,
    which the lenient reading uses), the parsed answer, the score with its reason, the routed expert."""
    sample, truth = scored.sample, scored.sample.truth
    row = {"id": sample.id, "input_type": sample.input_type, "category": sample.category,
           "scale": sample.scale_symbol, "original_type": sample.original_type or sample.task,
           "question": sample.question, "ground_truth": sample.ground_truth,
           "predicted_answer": sample.prediction, "answer_type": classify_answer_type(sample.ground_truth),
           "num_frames_sent": sample.num_frames, "truth_type": BENCH_NAME[truth.type],
           "parsed_answer": scored.parsed, "score": scored.score, "reason": scored.reason,
           "routed_expert": sample.routed_expert}
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
    number), answer_type, category, original_type. Optional: id, routed_expert, choices, and
    truth_type (read instead of answer_type: `eval run` rows carry the official answer_type too).
    """
    if "predicted_answer" not in row:
        raise _LineError("missing field 'predicted_answer'")
    prediction = row["predicted_answer"]
    if prediction is not None and not isinstance(prediction, str):
        raise _LineError(f"field 'predicted_answer' must be a string or null, got {type(prediction).__name__}")
    type_field = "truth_type" if isinstance(row.get("truth_type"), str) else "answer_type"
    answer_type = BENCH_ANSWER_TYPES.get(_text(row, type_field))
    if answer_type is None:
        raise _LineError(f"{type_field} {row[type_field]!r} is not one of {sorted(BENCH_ANSWER_TYPES)}")
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
    """Every non-blank line of a bench results JSONL file read the lenient way: the samples, and the
    lines that are not (1-based line numbers, with the reason). Extra fields are ignored."""
    lines, skipped = read_lines(path)
    samples: list[EvalSample] = []
    malformed = [Malformed(s.line, s.error) for s in skipped]
    for line, row in lines:
        try:
            samples.append(_lenient_sample(line, row, "bench"))
        except ValueError as err:
            malformed.append(Malformed(line, str(err)))
    return samples, sorted(malformed, key=lambda m: m.line)


def _lenient_sample(line: int, row: Any, layout: str) -> EvalSample:
    """An older-layout row is read as a bench row: its question_type is the task, its answer type
    follows the official question-type lists."""
    if not isinstance(row, dict):
        raise _LineError(f"a JSON {type(row).__name__}, not an object")
    if layout == "older":
        kind = row.get("question_type")
        answer_type = "mc" if kind in CHOICE_TYPES else "numerical" if kind in NUMERIC_TYPES else str(kind)
        row = {**row, "answer_type": answer_type, "original_type": kind}
    return sample_from_row(row, line)


# ---- both readings of a results file -------------------------------------------------------------
READINGS: tuple[str, ...] = ("official", "lenient")


@dataclass(frozen=True)
class ScoredRow:
    """One scored results row as summary.json aggregates it, under either reading."""

    line: int
    category: str | None  # a scale's bench spelling; None: counted in the overall score only
    answer_type: str | None  # mc | numerical | text | count, or what the row says
    task: Any  # the per_type key (original_type); None leaves the row out of per_type
    score: float
    scale: str | None = None
    routed_expert: str | None = None


@dataclass(frozen=True)
class Readings:
    """A results file read the official and the lenient way; rows, results and malformed follow
    `reading`. `differences` lists the rows the two readings score differently (or only one scores)."""

    reading: str
    official: OfficialResult
    rows: list[ScoredRow]
    results: list[dict[str, Any]]
    malformed: list[Malformed]
    differences: list[dict[str, Any]]


def read_results(lines: Sequence[tuple[int, Any]], skipped: Sequence[Skipped] = (), reading: str = "official",
                 lenient: Sequence[ScoredSample | Malformed] | None = None) -> Readings:
    """Score parsed results lines both ways. `lenient`: the lenient scores when already known (`eval run`
    has the samples themselves), one per line; by default each line is read back with sample_from_row."""
    if reading not in READINGS:
        raise ValueError(f"reading {reading!r} is not one of {READINGS}")
    official = score_lines(lines, skipped)
    if lenient is None:
        lenient = [_lenient_score(line, row, official.layout) for line, row in lines]
    by_line = {r.line: r for r in official.rows}
    dropped = {s.line: s for s in official.skipped}
    rows, results, differences = [], [], []
    malformed = ([Malformed(s.line, s.error + (" (the official scorer would crash here)" if s.crashes else ""))
                  for s in official.skipped] if reading == "official" else
                 [Malformed(s.line, s.error) for s in skipped])
    for (line, row), other in zip(lines, lenient):
        mine = by_line.get(line)
        scored_leniently = isinstance(other, ScoredSample)
        if (mine is not None) != scored_leniently or (scored_leniently and abs(mine.score - other.score) > 1e-9):
            differences.append(_difference(line, row, mine, dropped.get(line), other))
        if reading == "official" and mine is not None:
            rows.append(_official_row(mine, official.layout))
            results.append(_result(row, line, reading, mine.score, mine.answer, _reason(mine), mine, other))
        elif reading == "lenient" and isinstance(other, ScoredSample):
            rows.append(scored_row(other, line))
            results.append(_result(row, line, reading, other.score, other.parsed, other.reason, mine, other))
        elif reading == "lenient":
            malformed.append(other)
    return Readings(reading, official, rows, results, sorted(malformed, key=lambda m: m.line), differences)


def scored_row(scored: ScoredSample, line: int = 0) -> ScoredRow:
    """A lenient-reading score as summary.json aggregates it."""
    sample = scored.sample
    return ScoredRow(line, sample.category, BENCH_NAME[sample.truth.type], sample.task, scored.score, sample.scale,
                     sample.routed_expert)


def _lenient_score(line: int, row: Any, layout: str) -> ScoredSample | Malformed:
    try:
        return score_sample(_lenient_sample(line, row, layout))
    except ValueError as err:
        return Malformed(line, str(err))
    except Exception as err:  # noqa: BLE001 - a hostile row must not stop the file; it is reported by line
        return Malformed(line, f"not readable ({type(err).__name__}: {err})")


def _official_row(row: OfficialRow, layout: str) -> ScoredRow:
    doc = row.doc if isinstance(row.doc, dict) else {}
    category = doc.get("category")
    scale = canonical_scale(category) if isinstance(category, str) else None
    if scale is None or SCALE_BY_NAME[scale].bench_category != category:  # the official match is exact
        category = scale = None
    if layout == "bench":
        answer_type, task = doc.get("answer_type"), doc.get("original_type")
    else:
        task = doc.get("question_type")
        answer_type = "mc" if task in CHOICE_TYPES else "numerical" if task in NUMERIC_TYPES else None
    routed = doc.get("routed_expert")
    return ScoredRow(row.line, category, answer_type if isinstance(answer_type, str) else None, task, row.score,
                     scale, routed if isinstance(routed, str) else None)


def _reason(row: OfficialRow) -> str:
    if row.note:
        return row.note
    truth = row.doc.get("ground_truth") if isinstance(row.doc, dict) else None
    return f"read {row.answer!r:.60} against {truth!r:.60}"


def _result(row: Any, line: int, reading: str, score: float, parsed: Any, reason: str,
            official: OfficialRow | None, lenient: ScoredSample | Malformed) -> dict[str, Any]:
    """A results.jsonl row: the input row, then the chosen reading's score and both readings' scores."""
    fields = dict(row) if isinstance(row, dict) else {}
    fields.update({"line": line, "reading": reading, "score": score, "parsed_answer": parsed, "reason": reason,
                   "official_score": None if official is None else official.score,
                   "lenient_score": lenient.score if isinstance(lenient, ScoredSample) else None})
    if official is not None and official.note:
        fields["official_note"] = official.note
    return fields


def _difference(line: int, row: Any, mine: OfficialRow | None, dropped: Skipped | None,
                other: ScoredSample | Malformed) -> dict[str, Any]:
    official = ({"score": mine.score, "answer": mine.answer, **({"note": mine.note} if mine.note else {})}
                if mine is not None else {"not_scored": dropped.error if dropped else "not scored"})
    lenient = ({"score": other.score, "answer": other.parsed, "reason": other.reason}
               if isinstance(other, ScoredSample) else {"not_scored": other.error})
    return {"line": line, "id": row.get("id") if isinstance(row, dict) else None,
            "official": official, "lenient": lenient}
