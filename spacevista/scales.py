"""The five spatial scales, units, answer types and the task taxonomy: the one source of truth.

Pure data: no torch, no ray. Every other module (data, rewards, routing, curriculum) reads scale
names, unit factors, output tags and task definitions from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class ScaleSpec:
    """One spatial scale: its typical metric extent and the unit answers default to."""

    name: str
    display: str  # as in SpaceVista-Bench tables
    bench_category: str  # the benchmark's `category` spelling
    min_m: float  # typical smallest object/extent, metres
    max_m: float  # typical largest extent, metres
    default_unit: str  # canonical length unit for answers at this scale


# Ordered near -> far: the progressive curriculum and "neighbouring scale" credit use this order.
SCALE_SPECS: tuple[ScaleSpec, ...] = (
    ScaleSpec("tiny_tabletop", "Tiny Tabletop", "TinyTabletop", 0.001, 0.3, "mm"),
    ScaleSpec("tabletop", "Tabletop", "Tabletop", 0.01, 2.0, "cm"),
    ScaleSpec("indoor", "Indoor", "Indoor", 0.1, 20.0, "m"),
    ScaleSpec("outdoor", "Outdoor", "Outdoor", 1.0, 500.0, "m"),
    ScaleSpec("drone", "Drone", "Drone", 10.0, 5000.0, "m"),
)
SCALES: tuple[str, ...] = tuple(s.name for s in SCALE_SPECS)
SCALE_BY_NAME: dict[str, ScaleSpec] = {s.name: s for s in SCALE_SPECS}


def _norm_key(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


_SCALE_ALIASES: dict[str, str] = {}
for _s in SCALE_SPECS:
    for _alias in (_s.name, _s.display, _s.bench_category):
        _SCALE_ALIASES[_norm_key(_alias)] = _s.name
_SCALE_ALIASES.update({"tinytable": "tiny_tabletop", "table": "tabletop", "aerial": "drone", "uav": "drone"})


def canonical_scale(text: str | None) -> str | None:
    """Map any accepted spelling ("Tiny Tabletop", "TinyTabletop", "tiny-tabletop") to a scale name, else None."""
    if not text:
        return None
    return _SCALE_ALIASES.get(_norm_key(str(text)[:64]))


def scale_index(name: str) -> int:
    """Position of a scale in near -> far order (raises KeyError naming the scale if unknown)."""
    try:
        return SCALES.index(name)
    except ValueError:
        raise KeyError(f"unknown scale {name!r}; expected one of {list(SCALES)}") from None


# ---- units -------------------------------------------------------------------------------------
# Canonical unit symbols and their factor to SI (metres, square metres). Spelling variants
# ("metres", "millimeters", "m²") are the parser's business (rewards/parse.py) and map onto these.
LENGTH_UNITS: dict[str, float] = {"mm": 1e-3, "cm": 1e-2, "dm": 1e-1, "m": 1.0, "km": 1e3,
                                  "in": 0.0254, "ft": 0.3048, "yd": 0.9144, "mi": 1609.344}
AREA_UNITS: dict[str, float] = {"mm2": 1e-6, "cm2": 1e-4, "m2": 1.0, "km2": 1e6, "ha": 1e4,
                                "ft2": 0.09290304}


def unit_dimension(unit: str) -> str | None:
    """'length', 'area' or None for a canonical unit symbol."""
    if unit in LENGTH_UNITS:
        return "length"
    if unit in AREA_UNITS:
        return "area"
    return None


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert between canonical units of the same dimension (ValueError otherwise)."""
    if from_unit == to_unit:
        return value
    for table in (LENGTH_UNITS, AREA_UNITS):
        if from_unit in table and to_unit in table:
            return value * table[from_unit] / table[to_unit]
    raise ValueError(f"cannot convert {from_unit!r} to {to_unit!r}")


# ---- answers and tasks ------------------------------------------------------------------------
class AnswerType(str, Enum):
    NUMERIC = "numeric"  # a quantity with a unit (length, area)
    CHOICE = "choice"  # a multiple-choice letter
    COUNT = "count"  # a non-negative integer
    TEXT = "text"  # free text, normalised exact match


@dataclass(frozen=True)
class TaskSpec:
    name: str
    answer_type: AnswerType
    dimension: str | None  # 'length' | 'area' for numeric tasks
    description: str


TASK_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec("object_size", AnswerType.NUMERIC, "length", "longest side of a named object"),
    TaskSpec("object_distance", AnswerType.NUMERIC, "length", "distance between two named objects"),
    TaskSpec("camera_displacement", AnswerType.NUMERIC, "length", "how far the camera moved over the clip"),
    TaskSpec("camera_height", AnswerType.NUMERIC, "length", "height of the camera above the ground"),
    TaskSpec("area", AnswerType.NUMERIC, "area", "area of a region or object footprint"),
    TaskSpec("relative_direction", AnswerType.CHOICE, None, "direction of one object as seen from another"),
    TaskSpec("closer", AnswerType.CHOICE, None, "which of two objects is closer to the camera or a reference"),
    TaskSpec("larger", AnswerType.CHOICE, None, "which of two objects is larger"),
    TaskSpec("count", AnswerType.COUNT, None, "how many objects of a kind"),
    TaskSpec("description", AnswerType.TEXT, None, "short free-text answer"),
)
TASKS: tuple[str, ...] = tuple(t.name for t in TASK_SPECS)
TASK_BY_NAME: dict[str, TaskSpec] = {t.name: t for t in TASK_SPECS}

CHOICE_LETTERS: str = "ABCDEFGH"

# ---- model output format -----------------------------------------------------------------------
# <think>...</think><scale>indoor</scale><answer>3.2 m</answer>
THINK_TAG, SCALE_TAG, ANSWER_TAG = "think", "scale", "answer"
OUTPUT_TAGS: tuple[str, ...] = (THINK_TAG, SCALE_TAG, ANSWER_TAG)


def format_output(think: str, scale: str, answer: str) -> str:
    """The reference completion for a record (SFT targets, tests, docs)."""
    return f"<{THINK_TAG}>{think}</{THINK_TAG}><{SCALE_TAG}>{scale}</{SCALE_TAG}><{ANSWER_TAG}>{answer}</{ANSWER_TAG}>"


OUTPUT_INSTRUCTION: str = (
    "First reason inside <think></think>, then name the scene's scale inside <scale></scale> "
    f"(one of: {', '.join(SCALES)}), then give the final answer inside <answer></answer>."
)
