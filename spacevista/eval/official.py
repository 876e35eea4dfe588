"""The official SpaceVista-Bench scorer's reading, reproduced row by row and in every aggregate.

Two results layouts, as the SpaceVista repository (eval/metrics/) scores them:
- bench: rows with `answer_type` (mc | numerical | text). Each row gets a `score`; the metrics are
  per_category (Indoor, Outdoor, Tabletop, TinyTabletop), per_type (by `original_type`), overall and
  total_count.
- older: rows with `question_type` (a fine-grained task, e.g. COUNTING) and `task_type` (the group).
  Each row gets `accuracy` (choice types) or `MRA:.5:.95:.05` (numeric types); the metrics are
  `{task_type}_accuracy`, `{task_type}_MRA` and overall_accuracy.

The reading: the answer is the first `<answer>` block (case-insensitive), else the whole prediction;
a choice is a leading A-D; a number is the first number word in a fixed word order ('a'/'an' count
as 1), else the first `-?digits(.digits)`; a zero ground truth uses the absolute error.

Where the official scorer skips a line (invalid JSON, no `predicted_answer` or `ground_truth`) we skip
it; where it would crash (an uncaught exception) we score the row 0, or skip a line that is not JSON,
and leave a note. Means are numpy float64 sums divided by the count, as pandas takes them.
Pure: numpy only, no pandas, torch or ray.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The official thresholds, built exactly as the official scorer builds them (10 points, 0.50 .. 0.95):
# the float edges of `error <= 1 - t` depend on this construction, so it is not shared with rewards/.
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
NUMBER_WORDS: dict[str, str] = {  # searched in this order: the first word found anywhere wins
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
    "seventy": "70", "eighty": "80", "ninety": "90", "a": "1", "an": "1"}
CATEGORIES: tuple[str, ...] = ("Indoor", "Outdoor", "Tabletop", "TinyTabletop")  # the official order
ANSWER_METRICS: tuple[tuple[str, str, str], ...] = (
    ("mc", "mc_accuracy", "mc_count"), ("numerical", "num_MRA", "num_count"), ("text", "text_accuracy", "text_count"))
CHOICE_TYPES: tuple[str, ...] = ("EXISTENCE", "COMPARISON_HEIGHT", "COMPARISON_WIDTH", "POSITION_ACROSS_FRAME",
                                 "APPEAR_ORDER", "CAMERA_MOVING", "SPATIAL_RELATION", "OBJECT_MATCHING")
NUMERIC_TYPES: tuple[str, ...] = ("COUNTING", "DEPTH_all", "DEPTH", "HEIGHT", "WIDTH", "OBJECT_DISTANCE",
                                  "OBJECT_ROTATION", "ROOM_SIZE", "OBJECT_RELATIVE_DISTANCE", "CAMERA_ROTATION")
ACCURACY, MRA = "accuracy", "MRA:.5:.95:.05"  # the older layout's per-row metric names

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL | re.IGNORECASE)
_CHOICE = re.compile(r"^\s*([A-D])\b", re.IGNORECASE)
_NUMBER = re.compile(r"(-?\d+(\.\d+)?)")
_WORDS = tuple((re.compile(r"\b" + re.escape(word) + r"\b"), digits) for word, digits in NUMBER_WORDS.items())
_NEWLINE = re.compile(rb"\r\n|\r|\n")  # text mode's universal newlines, which the official reader splits on


# ---- the per-row reading -------------------------------------------------------------------------
def extract_answer(text: Any) -> Any:
    """The first <answer> block's content, stripped; else the prediction unchanged (None stays None)."""
    if text is None:
        return None
    match = _ANSWER.search(str(text))
    return match.group(1).strip() if match else text


def read_choice(answer: Any) -> str:
    """A leading A-D letter, upper-cased; else the stripped answer. A non-string raises AttributeError,
    as in the official scorer."""
    stripped = answer.strip()
    match = _CHOICE.search(stripped)
    return match.group(1).upper() if match else stripped


def read_number(answer: Any) -> str:
    """The number the official scorer reads, as a string; the string 'None' when there is none."""
    if answer is None:
        return "None"
    text = str(answer).strip().lower()
    for pattern, digits in _WORDS:
        if pattern.search(text):
            return digits
    match = _NUMBER.search(text)
    return match.group(1) if match else "None"


def to_float(value: Any) -> float | None:
    try:
        return float(value)
    except (ValueError, TypeError):
        return None


def exact_match(answer: Any, target: Any) -> float:
    if answer is None or target is None:
        return 0.0
    return 1.0 if str(answer).strip().lower() == str(target).strip().lower() else 0.0


def mean_relative_accuracy(pred: float, target: float) -> float:
    """The fraction of thresholds t with error <= 1 - t; the error is relative, absolute for a zero
    target. A None operand raises TypeError, as in the official scorer."""
    error = abs(pred - target) if target == 0.0 else abs((pred - target) / target)
    return float((error <= 1 - MRA_THRESHOLDS).mean())


def classify_answer_type(ground_truth: Any) -> str:
    """The official `answer_type` of a question from its answer: mc (A-E), numerical (a float) or text."""
    answer = str(ground_truth).strip()
    if answer in ("A", "B", "C", "D", "E"):
        return "mc"
    return "numerical" if to_float(answer) is not None else "text"


def score_bench_row(doc: dict[str, Any]) -> tuple[float, Any]:
    """(score, the answer as read) of one bench-layout row. KeyError: the official scorer skips the
    row; any other exception: it crashes on the row."""
    prediction, truth = doc["predicted_answer"], doc["ground_truth"]
    answer_type = doc.get("answer_type", "")
    answer = extract_answer(prediction)
    if answer_type == "mc":
        choice = read_choice(answer)
        return exact_match(choice, truth), choice
    if answer_type == "numerical":
        number = None
        try:
            number = read_number(answer)
            return mean_relative_accuracy(to_float(number), to_float(truth)), number
        except (TypeError, ValueError):
            return 0.0, number
    if answer_type == "text":
        text = extract_answer(answer)
        return exact_match(text, truth), text
    return 0.0, None


def score_older_row(doc: dict[str, Any]) -> tuple[str, float, Any]:
    """(metric name, value, the answer as read) of one older-layout row; exceptions as score_bench_row,
    and ValueError for a question_type the official scorer does not know (it crashes)."""
    question_type = doc["question_type"]
    answer = extract_answer(doc["predicted_answer"])
    if question_type in CHOICE_TYPES:
        choice = read_choice(answer)
        return ACCURACY, exact_match(choice, doc["ground_truth"]), choice
    if question_type in NUMERIC_TYPES:
        number = read_number(answer)
        try:
            return MRA, mean_relative_accuracy(to_float(number), to_float(doc["ground_truth"])), number
        except TypeError:
            return MRA, 0.0, number
    raise ValueError(f"Unknown SpaceVista question type: {question_type!r}")


# ---- reading a file ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skipped:
    """A line with no scored row: `crashes` when the official scorer would abort there, not skip."""

    line: int
    error: str
    crashes: bool = False


@dataclass(frozen=True)
class OfficialRow:
    line: int
    doc: Any  # the parsed JSON value (normally an object)
    values: dict[str, float]  # bench: {"score": s}; older: {"accuracy": a} and/or {"MRA:.5:.95:.05": m}
    # (a crashed older row of unknown question_type: {}, counted in overall_accuracy only)
    score: float  # the row's own score (older: its accuracy or MRA)
    answer: Any  # the answer as read (choice letter, number string, text); None when not read
    note: str | None = None  # set where the official scorer would crash on this row (scored 0)


@dataclass(frozen=True)
class OfficialResult:
    layout: str  # bench | older
    rows: list[OfficialRow]
    skipped: list[Skipped]
    metrics: dict[str, Any]  # the official metrics dict (keys as its JSON file spells them)
    notes: list[str]  # whole-file places where the official scorer would crash


def read_lines(path: str | Path) -> tuple[list[tuple[int, Any]], list[Skipped]]:
    """Every non-blank line's JSON value with its 1-based line number, and the lines that are not JSON."""
    parsed: list[tuple[int, Any]] = []
    skipped: list[Skipped] = []
    for number, raw in enumerate(_NEWLINE.split(Path(path).read_bytes()), start=1):
        try:
            text = raw.decode("utf-8").strip()
            if text:
                parsed.append((number, json.loads(text)))
        except json.JSONDecodeError as err:
            skipped.append(Skipped(number, f"invalid JSON: {err}"))
        except UnicodeDecodeError as err:
            skipped.append(Skipped(number, f"invalid UTF-8: {err}", crashes=True))
        except (RecursionError, ValueError) as err:  # nested too deeply; an integer too long to read
            skipped.append(Skipped(number, f"unreadable JSON ({type(err).__name__}: {err})", crashes=True))
    return parsed, skipped


def layout_of(docs: Iterable[Any]) -> str:
    """older when some row has `question_type` and none has `answer_type`; bench otherwise."""
    objects = [d for d in docs if isinstance(d, dict)]
    older = any("question_type" in d for d in objects) and not any("answer_type" in d for d in objects)
    return "older" if older else "bench"


def score_lines(lines: Sequence[tuple[int, Any]], skipped: Sequence[Skipped] = (),
                layout: str | None = None) -> OfficialResult:
    """Score parsed lines as the official scorer would (layout: detected when None)."""
    layout = layout or layout_of(doc for _, doc in lines)
    rows, skipped = [], list(skipped)
    for line, doc in lines:
        try:
            if layout == "bench":
                score, answer = score_bench_row(doc)
                values = {"score": score}
            else:
                metric, score, answer = score_older_row(doc)
                values = {**_carried(doc), metric: score}
            rows.append(OfficialRow(line, doc, values, score, answer))
        except KeyError as err:
            skipped.append(Skipped(line, f"missing field {err}"))
        except Exception as err:  # noqa: BLE001 - where the official scorer raises, we note it and score 0
            note = f"the official scorer would crash here ({type(err).__name__}: {err})"
            rows.append(OfficialRow(line, doc, _crash_values(doc, layout), 0.0, None, note))
    skipped.sort(key=lambda s: s.line)
    metrics, notes = (bench_metrics if layout == "bench" else older_metrics)(rows)
    return OfficialResult(layout, rows, skipped, metrics, notes)


def score_file(path: str | Path, layout: str | None = None) -> OfficialResult:
    return score_lines(*read_lines(path), layout=layout)


def _crash_values(doc: Any, layout: str) -> dict[str, float]:
    """A crashed row's 0 under its own metric; an unknown question type's counts in overall_accuracy only."""
    if layout == "bench":
        return {"score": 0.0}
    kind = doc.get("question_type") if isinstance(doc, dict) else None
    return {ACCURACY: 0.0} if kind in CHOICE_TYPES else {MRA: 0.0} if kind in NUMERIC_TYPES else {}


def _carried(doc: dict[str, Any]) -> dict[str, float]:
    """Metric values a row already carries: the official scorer keeps those it does not overwrite."""
    return {k: float(v) for k in (ACCURACY, MRA)
            if isinstance(v := doc.get(k), (int, float)) and not (isinstance(v, float) and math.isnan(v))}


# ---- aggregates ----------------------------------------------------------------------------------
def mean(values: Sequence[float]) -> float:
    """pandas' mean of a float64 column: numpy's (pairwise) sum over the count."""
    return float(np.asarray(values, dtype=np.float64).sum() / len(values))


def is_missing(value: Any) -> bool:
    """What pandas' groupby leaves out: None and NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def json_key(key: Any) -> str:
    """A dict key as Python's json module writes it."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, float) and not math.isfinite(key):
        return "NaN" if math.isnan(key) else ("Infinity" if key > 0 else "-Infinity")
    return repr(key)


def group_rows(keys: Sequence[Any]) -> tuple[dict[Any, list[int]], list[str]]:
    """pandas groupby order: row indices per key (None/NaN left out; equal keys such as 1 and True
    merge under the first seen), numbers sorted before strings. Notes name unhashable keys (a crash)."""
    groups: dict[Any, list[int]] = {}
    notes: list[str] = []
    for i, key in enumerate(_column(keys)):
        if is_missing(key):
            continue
        if not isinstance(key, Hashable):
            notes.append(f"unhashable group key {key!r:.60} (row {i + 1}): the official scorer would crash")
            continue
        groups.setdefault(key, []).append(i)
    numbers = sorted(k for k in groups if not isinstance(k, str))
    return {k: groups[k] for k in [*numbers, *sorted(k for k in groups if isinstance(k, str))]}, notes


def _column(values: Sequence[Any]) -> list[Any]:
    """The values as pandas types their column: integers with a float or a missing value become floats."""
    present = [v for v in values if not is_missing(v)]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    in_int64 = all(-2**63 <= v < 2**63 for v in present if isinstance(v, int))
    if present and numeric and in_int64 and (len(present) < len(values) or any(isinstance(v, float) for v in present)):
        return [None if is_missing(v) else float(v) for v in values]
    return list(values)


def _columns(rows: Sequence[OfficialRow]) -> set[str]:
    return {key for r in rows if isinstance(r.doc, dict) for key in r.doc}


def _field(row: OfficialRow, key: str) -> Any:
    return row.doc.get(key) if isinstance(row.doc, dict) else None


def bench_metrics(rows: Sequence[OfficialRow]) -> tuple[dict[str, Any], list[str]]:
    """compute_metrics' dict for bench-layout rows, and notes where it would crash."""
    if not rows:
        return {"overall": 0.0}, []
    columns, notes = _columns(rows), []
    per_category: dict[str, Any] = {}
    if "category" not in columns:
        notes.append("no row has a category: the official scorer would crash (KeyError 'category')")
    for category in CATEGORIES:
        in_category = [r for r in rows if _field(r, "category") == category]
        if not in_category:
            continue
        result: dict[str, Any] = {"count": len(in_category)}
        if "answer_type" not in columns:
            notes.append("no row has an answer_type: the official scorer would crash (KeyError 'answer_type')")
        for answer_type, metric, count in ANSWER_METRICS:
            scores = [r.score for r in in_category if _field(r, "answer_type") == answer_type]
            if scores:
                result[metric], result[count] = mean(scores), len(scores)
        result["overall"] = mean([r.score for r in in_category])
        per_category[category] = result
    per_type: dict[str, Any] = {}
    if "original_type" in columns:
        groups, group_notes = group_rows([_field(r, "original_type") for r in rows])
        notes += group_notes
        for key, members in groups.items():
            per_type[json_key(key)] = {"score": mean([rows[i].score for i in members]), "count": len(members)}
        if len({isinstance(key, str) for key in groups}) > 1:
            notes.append("original_type mixes strings and numbers: the official scorer would crash printing its "
                         "summary (TypeError sorting the types)")
    else:
        notes.append("no row has an original_type: the official scorer would crash (KeyError 'original_type')")
    return {"per_category": per_category, "per_type": per_type, "overall": mean([r.score for r in rows]),
            "total_count": len(rows)}, list(dict.fromkeys(notes))


def older_metrics(rows: Sequence[OfficialRow]) -> tuple[dict[str, Any], list[str]]:
    """_aggregate's dict for older-layout rows, and notes where it would crash."""
    if not rows:
        return {"overall_accuracy": 0.0}, []
    output: dict[str, Any] = {}
    notes: list[str] = []
    if "task_type" in _columns(rows):
        groups, notes = group_rows([_field(r, "task_type") for r in rows])
        for task, members in groups.items():
            for metric, suffix in ((ACCURACY, "accuracy"), (MRA, "MRA")):
                values = [rows[i].values[metric] for i in members if metric in rows[i].values]
                if values:
                    output[f"{task}_{suffix}"] = mean(values)
    all_values = [r.values[m] for m in (ACCURACY, MRA) for r in rows if m in r.values]
    all_values += [r.score for r in rows if r.note and not r.values]  # crashed, of no known type: a 0
    output["overall_accuracy"] = mean(all_values) if all_values else 0.0
    return output, notes
