"""The five spatial scales, units, answer types and the task taxonomy: the one source of truth.

Pure data: no torch, no ray. Every other module (data, rewards, routing, curriculum) reads scale
names, unit factors, output tags and task definitions from here.
"""

from __future__ import annotations

import math
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
    symbol: str | None  # SpaceVista-Bench's `scale` field ("mm", "cm", "m", "<km"); None: not in the bench
    groups: tuple[str, ...] = ()  # SpaceVista-1M data groups filed under this scale ("Wild Indoor")


# Ordered near -> far: the progressive curriculum and "neighbouring scale" credit use this order.
SCALE_SPECS: tuple[ScaleSpec, ...] = (
    ScaleSpec("tiny_tabletop", "Tiny Tabletop", "TinyTabletop", 0.001, 0.3, "mm", "mm", ("Tiny Tabletop",)),
    ScaleSpec("tabletop", "Tabletop", "Tabletop", 0.01, 2.0, "cm", "cm", ("Tabletop",)),
    ScaleSpec("indoor", "Indoor", "Indoor", 0.1, 20.0, "m", "m", ("Indoor", "Wild Indoor")),
    ScaleSpec("outdoor", "Outdoor", "Outdoor", 1.0, 500.0, "m", "<km", ("Outdoor",)),
    ScaleSpec("drone", "Drone", "Drone", 10.0, 5000.0, "m", None, ("Drone",)),
)
SCALES: tuple[str, ...] = tuple(s.name for s in SCALE_SPECS)
SCALE_BY_NAME: dict[str, ScaleSpec] = {s.name: s for s in SCALE_SPECS}


def _norm_key(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


_SCALE_ALIASES: dict[str, str] = {}
for _s in SCALE_SPECS:
    for _alias in (_s.name, _s.display, _s.bench_category, *_s.groups):
        _SCALE_ALIASES[_norm_key(_alias)] = _s.name
_SCALE_ALIASES.update({"tinytable": "tiny_tabletop", "table": "tabletop", "aerial": "drone", "uav": "drone"})
# The bench's scale symbols are matched exactly ("<km" is outdoor; a bare "km" names no scale).
SCALE_BY_SYMBOL: dict[str, str] = {s.symbol: s.name for s in SCALE_SPECS if s.symbol}


def canonical_scale(text: str | None) -> str | None:
    """Map any accepted spelling ("Tiny Tabletop", "TinyTabletop", "tiny-tabletop", a data group such as
    "Wild Indoor", or a bench scale symbol "mm"/"cm"/"m"/"<km") to a scale name, else None."""
    if not text:
        return None
    text = str(text)[:64]
    return SCALE_BY_SYMBOL.get(text.strip().lower()) or _SCALE_ALIASES.get(_norm_key(text))


def scale_index(name: str) -> int:
    """Position of a scale in near -> far order (raises KeyError naming the scale if unknown)."""
    try:
        return SCALES.index(name)
    except ValueError:
        raise KeyError(f"unknown scale {name!r}; expected one of {list(SCALES)}") from None


# ---- units -------------------------------------------------------------------------------------
# Canonical unit symbols and their factor to SI (metres, square metres). Spelling variants
# ("metres", "millimeters", "m²") are the parser's business (grammar/parse.py) and map onto these.
LENGTH_UNITS: dict[str, float] = {"mm": 1e-3, "cm": 1e-2, "dm": 1e-1, "m": 1.0, "km": 1e3,
                                  "in": 0.0254, "ft": 0.3048, "yd": 0.9144, "mi": 1609.344}
AREA_UNITS: dict[str, float] = {"mm2": 1e-6, "cm2": 1e-4, "m2": 1.0, "km2": 1e6, "ha": 1e4,
                                "ft2": 0.09290304}
ANGLE_UNITS: dict[str, float] = {"deg": 1.0, "rad": 180.0 / math.pi}  # factor to degrees
UNITS_BY_DIMENSION: dict[str, dict[str, float]] = {"length": LENGTH_UNITS, "area": AREA_UNITS, "angle": ANGLE_UNITS}
DEFAULT_UNIT: dict[str, str] = {"area": "m2", "angle": "deg"}  # lengths default to the scale's unit


def unit_dimension(unit: str) -> str | None:
    """'length', 'area', 'angle' or None for a canonical unit symbol."""
    for dimension, table in UNITS_BY_DIMENSION.items():
        if unit in table:
            return dimension
    return None


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert between canonical units of the same dimension (ValueError otherwise)."""
    if from_unit == to_unit:
        return value
    for table in UNITS_BY_DIMENSION.values():
        if from_unit in table and to_unit in table:
            return value * table[from_unit] / table[to_unit]
    raise ValueError(f"cannot convert {from_unit!r} to {to_unit!r}")


# ---- answers and tasks ------------------------------------------------------------------------
class AnswerType(str, Enum):
    NUMERIC = "numeric"  # a quantity with a unit (length, area, angle)
    CHOICE = "choice"  # a multiple-choice letter
    COUNT = "count"  # a non-negative integer
    TEXT = "text"  # free text, normalised exact match (yes/no included)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its answer type and (numeric) dimension. `official` is SpaceVista's own name for it
    (None for our synthetic tasks); `also` lists other answer types the source data may use for it
    (a comparison asked as an open question is answered in text)."""

    name: str
    answer_type: AnswerType
    dimension: str | None  # 'length' | 'area' | 'angle' for numeric tasks
    description: str
    official: str | None = None
    also: tuple[AnswerType, ...] = ()

    @property
    def answer_types(self) -> tuple[AnswerType, ...]:
        return (self.answer_type, *self.also)


_N, _C, _K, _T = AnswerType.NUMERIC, AnswerType.CHOICE, AnswerType.COUNT, AnswerType.TEXT
# Our synthetic tasks (what `spacevista data synth` generates; the tiny policy's tokenizer knows these names).
SYNTHETIC_TASK_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec("object_size", _N, "length", "longest side of a named object"),
    TaskSpec("object_distance", _N, "length", "distance between two named objects", "OBJECT_DISTANCE"),
    TaskSpec("camera_displacement", _N, "length", "how far the camera moved over the clip"),
    TaskSpec("camera_height", _N, "length", "height of the camera above the ground"),
    TaskSpec("area", _N, "area", "area of a region or object footprint"),
    TaskSpec("relative_direction", _C, None, "direction of one object as seen from another"),
    TaskSpec("closer", _C, None, "which of two objects is closer to the camera or a reference"),
    TaskSpec("larger", _C, None, "which of two objects is larger"),
    TaskSpec("count", _K, None, "how many objects of a kind"),
    TaskSpec("description", _T, None, "short free-text answer"),
)
# The 19 task types of SpaceVista-1M / SpaceVista-Bench (`original_type`, `TaskType`), one more
# (OBJECT_DISTANCE) shared with the synthetic tasks above. The bench scores multiple choice by the
# letter, numbers (counts included) by MRA, anything else by exact text.
OFFICIAL_TASK_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec("existence", _T, None, "whether an object is present (yes/no)", "EXISTENCE", (_C,)),
    TaskSpec("comparison_height", _C, None, "which of two objects is taller", "COMPARISON_HEIGHT", (_T,)),
    TaskSpec("comparison_width", _C, None, "which of two objects is wider", "COMPARISON_WIDTH", (_T,)),
    TaskSpec("position_across_frame", _C, None, "where an object moves or lies across frames",
             "POSITION_ACROSS_FRAME", (_T,)),
    TaskSpec("appear_order", _C, None, "the order in which objects first appear", "APPEAR_ORDER", (_T,)),
    TaskSpec("camera_moving", _C, None, "the direction the camera moves", "CAMERA_MOVING", (_T,)),
    TaskSpec("spatial_relation", _C, None, "the spatial relation of two objects", "SPATIAL_RELATION", (_T,)),
    TaskSpec("object_matching", _C, None, "which marked object in one frame is the one in another",
             "OBJECT_MATCHING", (_T,)),
    TaskSpec("counting", _K, None, "how many objects of a kind", "COUNTING"),
    TaskSpec("object_counting", _K, None, "how many objects like the marked one", "OBJECT_COUNTING"),
    TaskSpec("depth", _N, "length", "distance of a marked point or object from the camera", "DEPTH"),
    TaskSpec("depth_all", _N, "length", "depth of a marked object across the frames", "DEPTH_all"),
    TaskSpec("height", _N, "length", "height of a marked object", "HEIGHT"),
    TaskSpec("width", _N, "length", "width of a marked object", "WIDTH"),
    TaskSpec("object_rotation", _N, "angle", "how far an object turns, in degrees", "OBJECT_ROTATION"),
    TaskSpec("room_size", _N, "area", "floor area of the room", "ROOM_SIZE"),
    TaskSpec("object_relative_distance", _N, "length", "distance between two marked objects",
             "OBJECT_RELATIVE_DISTANCE"),
    TaskSpec("camera_rotation", _N, "angle", "how far the camera turns, in degrees", "CAMERA_ROTATION"),
)
TASK_SPECS: tuple[TaskSpec, ...] = SYNTHETIC_TASK_SPECS + OFFICIAL_TASK_SPECS
TASKS: tuple[str, ...] = tuple(t.name for t in TASK_SPECS)
TASK_BY_NAME: dict[str, TaskSpec] = {t.name: t for t in TASK_SPECS}
# The official names, as spelled in the data ("DEPTH_all"), -> our task.
TASK_BY_OFFICIAL: dict[str, str] = {t.official: t.name for t in TASK_SPECS if t.official}

CHOICE_LETTERS: str = "ABCDEFGH"

# ---- model output format -----------------------------------------------------------------------
THINK_TAG, SCALE_TAG, ANSWER_TAG = "think", "scale", "answer"
OUTPUT_TAGS: tuple[str, ...] = (THINK_TAG, SCALE_TAG, ANSWER_TAG)


class OutputFormat(str, Enum):
    """What a completion must look like; set per dataset (a record's `meta["output_format"]`)."""

    THINK_SCALE_ANSWER = "think_scale_answer"  # ours: <think>..</think><scale>indoor</scale><answer>3.2 m</answer>
    THINK_ANSWER = "think_answer"  # SpaceVista's: <think>..</think><answer>48</answer>, <scale> optional


def format_output(think: str, scale: str, answer: str,
                  output_format: OutputFormat = OutputFormat.THINK_SCALE_ANSWER) -> str:
    """The reference completion for a record (SFT targets, tests, docs)."""
    scale_block = f"<{SCALE_TAG}>{scale}</{SCALE_TAG}>" if output_format is OutputFormat.THINK_SCALE_ANSWER else ""
    return f"<{THINK_TAG}>{think}</{THINK_TAG}>{scale_block}<{ANSWER_TAG}>{answer}</{ANSWER_TAG}>"


OUTPUT_INSTRUCTIONS: dict[OutputFormat, str] = {
    OutputFormat.THINK_SCALE_ANSWER: (
        "First reason inside <think></think>, then name the scene's scale inside <scale></scale> "
        f"(one of: {', '.join(SCALES)}), then give the final answer inside <answer></answer>."),
    OutputFormat.THINK_ANSWER: ("First reason inside <think></think>, then give the final answer inside "
                                "<answer></answer>."),
}
OUTPUT_INSTRUCTION: str = OUTPUT_INSTRUCTIONS[OutputFormat.THINK_SCALE_ANSWER]
