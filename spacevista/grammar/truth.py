"""Ground truth of one record, validated and normalised once per prompt (GRPO scores n completions
against it).

Accepted shapes: the record form `{"scale", "task", "answer": {"type", "value", "unit", "choices"}}`,
the flat verl form `{"type", "value", "unit", "choices", "scale", "task"}`, or either as a JSON
string (what the parquet column `reward_model.ground_truth` holds). Optional keys set per dataset:
`output_format` (a `scales.OutputFormat` value; default think_scale_answer) and `count_metric`
("exact", the default, or "mra": counts scored by Mean Relative Accuracy, as SpaceVista-Bench does).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from spacevista.grammar.parse import (
    normalise_text,
    parse_choice,
    parse_count,
    parse_quantity,
    unit_symbol,
)
from spacevista.scales import (
    CHOICE_LETTERS,
    DEFAULT_UNIT,
    SCALE_BY_NAME,
    TASK_BY_NAME,
    AnswerType,
    OutputFormat,
    canonical_scale,
    convert,
    unit_dimension,
)


class GroundTruthError(ValueError):
    """A record's ground truth that cannot be scored against (a data bug, not a model error)."""


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """A normalised answer: numeric `value` is a float in `unit`, choice a letter, count an int,
    text already passed through parse.normalise_text."""

    scale: str
    task: str
    type: AnswerType
    value: float | int | str
    unit: str | None = None
    choices: tuple[str, ...] | None = None
    output_format: OutputFormat = OutputFormat.THINK_SCALE_ANSWER
    count_metric: str = "exact"  # exact | mra


COUNT_METRICS: tuple[str, ...] = ("exact", "mra")


def parse_ground_truth(raw: GroundTruth | dict[str, Any] | str) -> GroundTruth:
    """Validate and normalise a ground truth in any accepted shape (raises GroundTruthError)."""
    if isinstance(raw, GroundTruth):
        return raw
    if isinstance(raw, str):
        return _parse_json(raw)
    if not isinstance(raw, dict):
        raise GroundTruthError(f"ground truth is {type(raw).__name__}, expected dict or JSON string")
    return _from_dict(raw)


@lru_cache(maxsize=4096)
def _parse_json(text: str) -> GroundTruth:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise GroundTruthError(f"ground truth is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise GroundTruthError(f"ground truth JSON is {type(raw).__name__}, expected an object")
    return _from_dict(raw)


def _field(raw: dict[str, Any], key: str) -> Any:
    if raw.get(key) is None:
        raise GroundTruthError(f"ground truth lacks {key!r}")
    return raw[key]


def _from_dict(raw: dict[str, Any]) -> GroundTruth:
    answer = raw["answer"] if isinstance(raw.get("answer"), dict) else raw
    scale = canonical_scale(_field(raw, "scale"))
    if scale is None:
        raise GroundTruthError(f"unknown scale {raw['scale']!r}")
    task = _field(raw, "task")
    if not isinstance(task, str) or task not in TASK_BY_NAME:
        raise GroundTruthError(f"unknown task {task!r}")
    type_name = _field(answer, "type")
    try:
        answer_type = AnswerType(type_name)
    except (TypeError, ValueError):
        raise GroundTruthError(f"unknown answer type {type_name!r}") from None
    value = _field(answer, "value")
    choices = _choices(answer.get("choices"))
    try:
        protocol = {"output_format": OutputFormat(raw.get("output_format") or OutputFormat.THINK_SCALE_ANSWER.value)}
    except ValueError:
        raise GroundTruthError(f"unknown output_format {raw.get('output_format')!r}") from None
    protocol["count_metric"] = raw.get("count_metric") or "exact"
    if protocol["count_metric"] not in COUNT_METRICS:
        raise GroundTruthError(f"count_metric {protocol['count_metric']!r} is not one of {COUNT_METRICS}")
    if answer_type is AnswerType.NUMERIC:
        unit, number = _numeric(value, answer.get("unit"), scale, task)
        return GroundTruth(scale, task, answer_type, number, unit, choices, **protocol)
    if answer_type is AnswerType.CHOICE:
        letter = parse_choice(str(value), choices)
        if not letter or (choices and CHOICE_LETTERS.index(letter) >= len(choices)):
            raise GroundTruthError(f"choice answer {value!r} is not a letter of the choices {choices}")
        return GroundTruth(scale, task, answer_type, letter, None, choices, **protocol)
    if answer_type is AnswerType.COUNT:
        count = parse_count(str(value))
        if not isinstance(count, int):
            raise GroundTruthError(f"count answer {value!r}: {count.reason}")
        return GroundTruth(scale, task, answer_type, count, None, choices, **protocol)
    return GroundTruth(scale, task, answer_type, normalise_text(str(value)), None, choices, **protocol)


def _choices(choices: Any) -> tuple[str, ...] | None:
    """Option texts as a tuple (parquet may hand them over as a numpy array)."""
    if choices is None:
        return None
    if isinstance(choices, (str, bytes, dict)) or not hasattr(choices, "__iter__"):
        raise GroundTruthError(f"choices must be a list of strings, got {type(choices).__name__}")
    return tuple(str(c) for c in choices)


def _numeric(value: Any, unit: str | None, scale: str, task: str) -> tuple[str, float]:
    """Canonical unit and float value of a numeric answer. A missing unit defaults to the scale's
    default unit for lengths, m2 for areas and degrees for angles; a value given as text with its own
    unit ("350 cm") is converted to the record's unit."""
    dimension = TASK_BY_NAME[task].dimension or "length"
    if not unit:
        symbol = SCALE_BY_NAME[scale].default_unit if dimension == "length" else DEFAULT_UNIT[dimension]
    else:
        symbol = unit_symbol(str(unit))
        if symbol is None:
            raise GroundTruthError(f"unknown unit {unit!r}")
    if unit_dimension(symbol) != dimension:
        raise GroundTruthError(f"unit {unit!r} is not a {dimension} unit (task {task!r})")
    if isinstance(value, str):
        parsed = parse_quantity(value)
        if not parsed:
            raise GroundTruthError(f"numeric answer {value!r}: {parsed.reason}")
        number, value_unit = parsed
        if value_unit not in (None, symbol):
            if unit_dimension(value_unit) != dimension:
                raise GroundTruthError(f"numeric answer {value!r} is not a {dimension} (task {task!r})")
            number = convert(number, value_unit, symbol)
    elif isinstance(value, bool):
        raise GroundTruthError(f"numeric answer {value!r} is not a number")
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise GroundTruthError(f"numeric answer {value!r} is not a number") from None
    if not math.isfinite(number):
        raise GroundTruthError(f"numeric answer {value!r} is not finite")
    return symbol, number
