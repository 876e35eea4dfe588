"""A source's answer text -> a typed `Answer` for its task, with the answer grammar
(`grammar.parse`), so that records and rewards read numbers, units, counts and letters the same way.

- numeric: "3.5 m", "350cm", "12 square meters", "45°", or a bare number whose unit comes from the
  source's ``unit``, else from the question ("in meters"), else the dimension's default (the scale's
  unit for lengths, m2 for areas, degrees for angles; ``unit_assumed``).
- count: a non-negative integer ("3", "three").
- choice: a letter ("B", "(b)", "B. the coin") or an option's text; options from ``choices``/``options``
  or parsed from the question ("A. left  B. right"); none found: the letter alone (the options
  are in the question's own words).
- text: anything else, for tasks that admit free text (yes/no for EXISTENCE).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from spacevista import scales
from spacevista.grammar.parse import (
    normalise_text,
    parse_count,
    parse_quantity,
    unit_symbol,
)
from spacevista.records.schema import Answer

_LETTERS = f"[{scales.CHOICE_LETTERS}]"
_LETTER_RE = re.compile(rf"^\(?({_LETTERS})\)?(?:[.):,]?\s*$|[.):,]\s+\S)")
_OPTION_RE = re.compile(rf"(?:^|\s)\(?({_LETTERS})[.)]\s+(.+?)(?=\s+\(?{_LETTERS}[.)]\s|$)", re.MULTILINE)
_QUESTION_UNIT_RE = re.compile(r"\bin\s+(?:units\s+of\s+)?((?:square\s+|sq\.?\s*)?[a-z]+(?:\s*\^\s*2|²)?)")
_OPTION_LABEL_RE = re.compile(rf"^\(?{_LETTERS}[.)]\s*")


class AnswerError(ValueError):
    """An answer that does not fit its task; ``reason`` is a converter reject reason."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def typed_answer(task: str, scale: str, text: str, question: str, *, unit: Any = None,
                 choices: Any = None) -> tuple[Answer, bool]:
    """(Answer, whether the unit was assumed) for ``text`` under ``task`` (raises AnswerError)."""
    spec = scales.TASK_BY_NAME[task]
    kinds = spec.answer_types
    if spec.answer_type is scales.AnswerType.NUMERIC:
        return numeric_answer(spec, scale, text, question, unit)
    if spec.answer_type is scales.AnswerType.COUNT:
        count = parse_count(text)
        if not isinstance(count, int):
            raise AnswerError("non_numeric_answer", f"count answer {text!r} is not a non-negative integer")
        return Answer(scales.AnswerType.COUNT.value, str(count)), False
    options = _options(choices, question)
    if scales.AnswerType.CHOICE in kinds:
        letter = _choice_letter(text, options)
        if letter is not None:
            return Answer(scales.AnswerType.CHOICE.value, letter, None, options), False
    if scales.AnswerType.TEXT in kinds and not _LETTER_RE.match(text.strip()):
        return Answer(scales.AnswerType.TEXT.value, text.strip()), False
    raise AnswerError("bad_choice", f"answer {text!r} is not one of the letters or options {options or 'A-H'}")


def numeric_answer(spec: scales.TaskSpec, scale: str, text: str, question: str,
                   unit: Any = None) -> tuple[Answer, bool]:
    quantity = parse_quantity(text)
    if not quantity:
        raise AnswerError("non_numeric_answer", f"no number in {text!r}")
    value, symbol = quantity
    unit_assumed = False
    if symbol is None and isinstance(unit, str) and unit.strip():
        symbol = unit_symbol(unit)
        if symbol is None:
            raise AnswerError("bad_unit", f"unknown unit {unit!r}")
    if symbol is None:
        symbol = next(filter(None, (unit_symbol(m.group(1)) for m in _QUESTION_UNIT_RE.finditer(question.lower()))),
                      None)
    dimension = spec.dimension
    if symbol is None:
        symbol = scales.SCALE_BY_NAME[scale].default_unit if dimension == "length" else scales.DEFAULT_UNIT[dimension]
        unit_assumed = True
    if dimension == "area" and scales.unit_dimension(symbol) == "length" and f"{symbol}2" in scales.AREA_UNITS:
        symbol = f"{symbol}2"  # "25 m" for a room size means square metres
    if scales.unit_dimension(symbol) != dimension:
        raise AnswerError("bad_unit", f"{symbol!r} in {text!r} is not a {dimension} unit")
    number = np.format_float_positional(value, trim="-")
    return Answer(scales.AnswerType.NUMERIC.value, number, symbol), unit_assumed


def _options(raw: Any, question: str) -> list[str]:
    """Options as "A. text", from choices/options or else parsed from the question; [] if none."""
    letters = scales.CHOICE_LETTERS
    if isinstance(raw, dict):
        return [f"{k}. {v}" for k, v in sorted(raw.items())][:len(letters)]
    if isinstance(raw, list) and len(raw) >= 2 and all(isinstance(o, str) for o in raw):
        return [o if _OPTION_LABEL_RE.match(o) else f"{letters[i]}. {o}" for i, o in enumerate(raw[:len(letters)])]
    options = [f"{letter}. {text.strip()}" for letter, text in _OPTION_RE.findall(question)]
    return options if len(options) >= 2 else []


def _choice_letter(text: str, options: list[str]) -> str | None:
    """The letter an answer names, or None when it names none; AnswerError for a letter outside the options."""
    letters = scales.CHOICE_LETTERS[:len(options) or len(scales.CHOICE_LETTERS)]
    match = _LETTER_RE.match(text.strip())
    if match:
        if match.group(1) not in letters:
            raise AnswerError("bad_choice", f"answer {text!r} is not one of the letters {list(letters)}")
        return match.group(1)
    bodies = [normalise_text(_OPTION_LABEL_RE.sub("", o)) for o in options]
    wanted = normalise_text(text)
    return letters[bodies.index(wanted)] if wanted and wanted in bodies else None
