"""Parse model completions: the output tags, and answers as quantities with units, choice letters,
counts or free text.

Safety: no eval; completions are cut to MAX_COMPLETION_CHARS and answer texts to MAX_ANSWER_CHARS
before parsing; tags are located with str.find/str.count (linear); no regex repeats a repetition
(no `(x+)+`), and its optional parts start with distinct literals, so none can backtrack
catastrophically. Nothing here raises on any input: what cannot be parsed comes back as a falsy
`NoAnswer` carrying the reason.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache

from spacevista.scales import (
    ANGLE_UNITS,
    AREA_UNITS,
    CHOICE_LETTERS,
    LENGTH_UNITS,
    OUTPUT_TAGS,
    SCALE_TAG,
    THINK_TAG,
    OutputFormat,
    canonical_scale,
)

MAX_COMPLETION_CHARS = 16 * 1024  # ~4k tokens; what lies past this is not looked at
MAX_ANSWER_CHARS = 256  # the content of <answer> a parser looks at


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """The explicit "no answer" value: falsy, with the reason the text could not be parsed."""

    reason: str

    def __bool__(self) -> bool:
        return False


NO_SCALE_TAG = NoAnswer("no <scale> block")
NO_ANSWER_TAG = NoAnswer("no <answer> block")


# ---- tags ---------------------------------------------------------------------------------------
_TAG_MARKS: tuple[tuple[str, str, str], ...] = tuple((t, f"<{t}>", f"</{t}>") for t in OUTPUT_TAGS)


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    """Contents of the last complete <think>, <scale>, <answer> blocks (None where absent) and
    why the format is invalid (None when it is valid)."""

    think: str | None
    scale: str | None
    answer: str | None
    format_error: str | None


def _block(text: str, open_mark: str, close_mark: str) -> str | None:
    close = text.rfind(close_mark)
    if close < 0:
        return None
    start = text.rfind(open_mark, 0, close)
    return None if start < 0 else text[start + len(open_mark):close]


def _format_error(text: str, marks: tuple[tuple[str, str, str], ...] = _TAG_MARKS) -> str | None:
    """None when `text` is exactly the blocks of `marks` (default <think>..</think> <scale>..</scale>
    <answer>..</answer>): each tag once, in that order, with nothing but whitespace around the blocks."""
    spans: list[tuple[str, int, int]] = []  # (tag, index of open mark, index just past close mark)
    for tag, open_mark, close_mark in marks:
        n_open, n_close = text.count(open_mark), text.count(close_mark)
        if n_open == 0 and n_close == 0:
            return f"missing {open_mark}"
        if n_open > 1 or n_close > 1:
            return f"duplicated {open_mark if n_open > 1 else close_mark}"
        if n_close == 0:
            return f"unclosed {open_mark}"
        if n_open == 0:
            return f"{close_mark} without {open_mark}"
        start, close = text.find(open_mark), text.find(close_mark)
        if close < start:
            return f"{close_mark} before {open_mark}"
        spans.append((tag, start, close + len(close_mark)))
    for tag, start, end in spans:
        for outer, outer_start, outer_end in spans:
            if outer_start < start and end <= outer_end:
                return f"<{tag}> nested inside <{outer}>"
    for (tag, _, end), (next_tag, next_start, _) in zip(spans, spans[1:]):
        if next_start < end:
            return f"misordered: <{next_tag}> before </{tag}>"
    if text[:spans[0][1]].strip():
        return f"text before <{THINK_TAG}>"
    for (tag, _, end), (next_tag, next_start, _) in zip(spans, spans[1:]):
        if text[end:next_start].strip():
            return f"text between </{tag}> and <{next_tag}>"
    if text[spans[-1][2]:].strip():
        return f"text after </{spans[-1][0]}>"
    return None


_THINK_OPEN, _THINK_CLOSE = _TAG_MARKS[0][1:]
_SCALE_OPEN, _SCALE_CLOSE = _TAG_MARKS[1][1:]
_ANSWER_OPEN, _ANSWER_CLOSE = _TAG_MARKS[2][1:]
_THINK_OPEN_LEN, _THINK_CLOSE_LEN = len(_THINK_OPEN), len(_THINK_CLOSE)
_SCALE_OPEN_LEN, _SCALE_CLOSE_LEN = len(_SCALE_OPEN), len(_SCALE_CLOSE)
_ANSWER_OPEN_LEN, _ANSWER_CLOSE_LEN = len(_ANSWER_OPEN), len(_ANSWER_CLOSE)


def _well_formed(text: str) -> ParsedCompletion | None:
    """The hot path for a valid completion: exactly six "<" and the six marks found in order mean
    each tag occurs once, in order, unnested; then only whitespace may lie outside the blocks.
    None for anything else (the caller then finds the reason)."""
    if text.count("<") != 6:
        return None
    think_start = text.find(_THINK_OPEN)
    think_end = text.find(_THINK_CLOSE, think_start)
    scale_start = text.find(_SCALE_OPEN, think_end)
    scale_end = text.find(_SCALE_CLOSE, scale_start)
    answer_start = text.find(_ANSWER_OPEN, scale_end)
    answer_end = text.find(_ANSWER_CLOSE, answer_start)
    if -1 in (think_start, think_end, scale_start, scale_end, answer_start, answer_end):
        return None
    for gap in (text[:think_start], text[think_end + _THINK_CLOSE_LEN:scale_start],
                text[scale_end + _SCALE_CLOSE_LEN:answer_start], text[answer_end + _ANSWER_CLOSE_LEN:]):
        if gap and not gap.isspace():
            return None
    return ParsedCompletion(text[think_start + _THINK_OPEN_LEN:think_end],
                            text[scale_start + _SCALE_OPEN_LEN:scale_end],
                            text[answer_start + _ANSWER_OPEN_LEN:answer_end], None)


_MARKS_WITHOUT_SCALE = tuple(m for m in _TAG_MARKS if m[0] != SCALE_TAG)


def parse_completion(text: str,
                     output_format: OutputFormat = OutputFormat.THINK_SCALE_ANSWER) -> ParsedCompletion:
    """Split a completion into its tagged parts and check the output format (`THINK_ANSWER`: the
    <scale> block may be left out; when present it must sit between </think> and <answer>)."""
    if not isinstance(text, str):
        return ParsedCompletion(None, None, None, f"completion is {type(text).__name__}, not str")
    truncated = len(text) > MAX_COMPLETION_CHARS
    if truncated:
        text = text[:MAX_COMPLETION_CHARS]
    parsed = _well_formed(text)
    if parsed is not None:
        return parsed
    scale_optional = output_format is OutputFormat.THINK_ANSWER and _SCALE_OPEN not in text and _SCALE_CLOSE not in text
    error = _format_error(text, _MARKS_WITHOUT_SCALE if scale_optional else _TAG_MARKS)
    if truncated and error is not None:
        error = f"completion over {MAX_COMPLETION_CHARS} chars, truncated: {error}"
    return ParsedCompletion(_block(text, _THINK_OPEN, _THINK_CLOSE), _block(text, _SCALE_OPEN, _SCALE_CLOSE),
                            _block(text, _ANSWER_OPEN, _ANSWER_CLOSE), error)


def parse_scale(text: str | None) -> str | NoAnswer:
    """The scale named inside <scale> (any spelling scales.canonical_scale accepts)."""
    return NO_SCALE_TAG if text is None else _parse_scale(text[:64])


@lru_cache(maxsize=1024)
def _parse_scale(text: str) -> str | NoAnswer:
    return canonical_scale(text) or NoAnswer(f"unknown scale {text[:40]!r}")


# ---- units --------------------------------------------------------------------------------------
_LENGTH_SPELLINGS: dict[str, tuple[str, ...]] = {
    "mm": ("millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("centimeter", "centimeters", "centimetre", "centimetres"),
    "dm": ("decimeter", "decimeters", "decimetre", "decimetres"),
    "m": ("meter", "meters", "metre", "metres"),
    "km": ("kilometer", "kilometers", "kilometre", "kilometres", "kms"),
    "in": ("inch", "inches"),
    "ft": ("foot", "feet"),
    "yd": ("yard", "yards", "yds"),
    "mi": ("mile", "miles"),
}
LENGTH_ALIASES: dict[str, str] = {sym: sym for sym in LENGTH_UNITS}
LENGTH_ALIASES.update({word: sym for sym, words in _LENGTH_SPELLINGS.items() for word in words})
AREA_ALIASES: dict[str, str] = {sym: sym for sym in AREA_UNITS}
AREA_ALIASES.update({"ha": "ha", "hectare": "ha", "hectares": "ha", "sqm": "m2", "sqft": "ft2"})
ANGLE_ALIASES: dict[str, str] = {sym: sym for sym in ANGLE_UNITS}
ANGLE_ALIASES.update({"°": "deg", "degree": "deg", "degrees": "deg", "degs": "deg",
                      "radian": "rad", "radians": "rad", "rads": "rad"})


def unit_symbol(unit: str, square: bool = False) -> str | None:
    """Canonical scales unit symbol for a spelling ("metres" -> "m", "m²"/"m^2" -> "m2", "°" -> "deg");
    `square` marks a "sq"/"square" prefix. None when unknown."""
    unit = unit.strip().lower().rstrip(".")
    if unit in ANGLE_ALIASES and not square:
        return ANGLE_ALIASES[unit]
    if unit.endswith("²"):
        unit, square = unit[:-1], True
    elif unit.endswith("^2"):
        unit, square = unit[:-2], True
    if not square:
        return LENGTH_ALIASES.get(unit) or AREA_ALIASES.get(unit)
    if unit.endswith("2"):
        return None
    length = LENGTH_ALIASES.get(unit)
    return AREA_ALIASES.get(f"{length}2") if length else None


# ---- numbers ------------------------------------------------------------------------------------
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_QUANTITY_RE = re.compile(
    rf"(?<![\w.])(?P<num>{_NUMBER})"
    r"(?:[ \t]*(?:(?P<sq>square|sq\.?)[ \t]*)?(?P<unit>[a-z]+|°)(?P<pow>\^2|²|2(?![\d.]))?)?"
)


def parse_quantity(text: str | None) -> tuple[float, str | None] | NoAnswer:
    """The first number in `text` and its canonical unit symbol (None for a bare number or a word
    that is not a unit): "1,200 mm" -> (1200.0, "mm"), "4 sq m" -> (4.0, "m2"), "3.5" -> (3.5, None)."""
    return NO_ANSWER_TAG if text is None else _parse_quantity(text[:MAX_ANSWER_CHARS])


@lru_cache(maxsize=8192)
def _parse_quantity(text: str) -> tuple[float, str | None] | NoAnswer:
    match = _QUANTITY_RE.search(_THOUSANDS_RE.sub("", text.lower()))
    if match is None:
        return NoAnswer(f"no number in {text[:40]!r}")
    value = float(match["num"])
    if value != value or value in (float("inf"), float("-inf")):
        return NoAnswer(f"number out of range in {text[:40]!r}")
    unit = match["unit"]
    if unit is None:
        return value, None
    if match["pow"]:
        unit += "²"
    return value, unit_symbol(unit, square=match["sq"] is not None)


# ---- choices, counts, text ----------------------------------------------------------------------
_UPPER, _LOWER = CHOICE_LETTERS, CHOICE_LETTERS.lower()
_CHOICE_RES: tuple[re.Pattern[str], ...] = (  # tried in order at the start of the answer
    re.compile(rf"\(([{_UPPER}{_LOWER}])\)"),  # "(b)"
    re.compile(rf"([{_UPPER}])(?:[.):,]|\s|$)"),  # "B", "B. left", "B)"
    re.compile(rf"([{_LOWER}])(?:[.)](?:\s|$)|$)"),  # "b", "b) left"
)
_CHOICE_KEYWORD_RE = re.compile(  # "Answer: B", "the option is (b)"
    rf"(?i:answer|option|choice)[ \t]*(?:(?i:is)[ \t]*)?(?::[ \t]*)?\(?([{_UPPER}{_LOWER}])(?![A-Za-z])"
)
_CHOICE_LABEL_RE = re.compile(rf"^\s*\(?[{_UPPER}][.):][ \t]*")  # the "B. " starting an option text "B. right"


def parse_choice(text: str | None, choices: tuple[str, ...] | None = None) -> str | NoAnswer:
    """An upper-case choice letter from "B", "(b)", "B. left", "Answer: B", or, given the record's
    `choices`, from the text of one of them ("right" -> "B" when choices[1] is "right" or "B. right")."""
    if text is None:
        return NO_ANSWER_TAG
    stripped = text[:MAX_ANSWER_CHARS].strip()
    for pattern in _CHOICE_RES:
        match = pattern.match(stripped)
        if match:
            return match[1].upper()
    match = _CHOICE_KEYWORD_RE.search(stripped)
    if match:
        return match[1].upper()
    if choices:
        wanted = normalise_text(stripped)
        for letter, choice in zip(CHOICE_LETTERS, choices):
            if wanted and normalise_text(_CHOICE_LABEL_RE.sub("", choice, count=1)) == wanted:
                return letter
    return NoAnswer(f"no choice letter in {stripped[:40]!r}")


_COUNT_WORDS: dict[str, int] = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_COUNT_RE = re.compile(rf"(?<![\w.])(?P<num>{_NUMBER})|\b(?P<word>{'|'.join(_COUNT_WORDS)})\b")


def parse_count(text: str | None) -> int | NoAnswer:
    """A non-negative integer from the first number ("3", "3.0", "1,200") or number word up to
    twenty ("three") in `text`."""
    return NO_ANSWER_TAG if text is None else _parse_count(text[:MAX_ANSWER_CHARS])


@lru_cache(maxsize=4096)
def _parse_count(text: str) -> int | NoAnswer:
    match = _COUNT_RE.search(_THOUSANDS_RE.sub("", text.lower()))
    if match is None:
        return NoAnswer(f"no count in {text[:40]!r}")
    if match["word"]:
        return _COUNT_WORDS[match["word"]]
    value = float(match["num"])
    if not (value >= 0 and value.is_integer()):
        return NoAnswer(f"count {match['num']!r} is not a non-negative integer")
    return int(value)


_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans(string.punctuation, " " * len(string.punctuation))


def normalise_text(text: str) -> str:
    """Lower-case, punctuation and articles (a/an/the) removed, whitespace collapsed."""
    return " ".join(_ARTICLES_RE.sub(" ", text[:MAX_ANSWER_CHARS].lower().translate(_PUNCTUATION)).split())
