"""Synthetic scenes and the question each poses, with exact answers (`synth` makes records of them, `render`
draws them).

Every scene is a top-down view of a flat world drawn at a per-scale pixels-per-metre (``ppm``, the
frame width covers ``VIEW_M[scale]`` metres, jittered by +-10%). The objects are the same coloured
blocks and discs at every scale, so one drawing means millimetres on the cutting mat and hundreds of
metres over fields: only the background tells the scale. A clip is ``frames`` crops of one canvas along a
straight camera pan (integer pixel offsets); the camera moves far for ``camera_displacement`` and barely
otherwise, and every object of a non-camera task stays in view in all frames. Numeric answers are in the
scale's default unit (area: its square), rounded to 3 significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from spacevista import scales
from spacevista.records.schema import Answer

SYNTH_TASKS: tuple[str, ...] = ("object_size", "object_distance", "camera_displacement", "area",
                                "relative_direction", "closer", "larger", "count")
VIEW_M: dict[str, float] = {"tiny_tabletop": 0.12, "tabletop": 1.2, "indoor": 8.0, "outdoor": 60.0, "drone": 600.0}
CUES: dict[str, str] = {"tiny_tabletop": "cutting-mat grid", "tabletop": "wood grain", "indoor": "floor tiles",
                        "outdoor": "sky and grass", "drone": "fields from above"}
PPM_JITTER = 0.10
SHAPES: tuple[str, ...] = ("block", "disc")
COLORS: dict[str, tuple[int, int, int]] = {"red": (225, 35, 35), "blue": (35, 70, 235),  # the objects' RGB
                                           "white": (250, 250, 250), "magenta": (225, 45, 215)}
NAMES: tuple[str, ...] = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
HORIZON = 0.35  # outdoor: sky above this fraction of the frame height (in world coordinates)


@dataclass
class SceneObject:
    """An object's footprint on the canvas: a w x h block or a disc of diameter w (= h), in pixels."""

    name: str
    x0: int
    y0: int
    w: int
    h: int

    @property
    def shape(self) -> str:
        return self.name.split()[1]

    @property
    def center(self) -> tuple[float, float]:
        return self.x0 + self.w / 2, self.y0 + self.h / 2

    @property
    def area_px(self) -> float:
        return math.pi * self.w * self.w / 4 if self.shape == "disc" else float(self.w * self.h)

    def distance_to(self, other: SceneObject) -> float:
        (ax, ay), (bx, by) = self.center, other.center
        return math.hypot(ax - bx, ay - by)


@dataclass
class Scene:
    """Geometry of one clip plus its question and answer."""

    scale: str
    task: str
    size: int
    ppm: float
    canvas: tuple[int, int]  # (width, height) in pixels
    offsets: list[tuple[int, int]]  # top-left corner of each frame on the canvas
    objects: list[SceneObject] = field(default_factory=list)
    question: str = ""
    answer: Answer | None = None
    exact: float | int | str = ""

    @property
    def horizon(self) -> int:
        return round(HORIZON * self.size) if self.scale == "outdoor" else 0

    def reference(self) -> str:
        return scales.format_output(CUES[self.scale], self.scale, self.answer.text())


class _Placer:
    """Places non-overlapping objects at random inside a region of the canvas."""

    def __init__(self, rng: np.random.Generator, box: tuple[int, int, int, int], objects: list[SceneObject]):
        self.rng, self.box, self.objects = rng, box, objects

    def place(self, name: str, length: int, aspect: float = 1.0, tries: int = 60) -> SceneObject:
        """An object of longest side ``length`` px (shrunk until it fits), appended to the scene."""
        x_lo, y_lo, x_hi, y_hi = self.box
        for attempt in range(tries):
            size = max(3, int(length * 0.85 ** (attempt // 10)))
            side = max(3, round(size * aspect))
            if name.endswith("disc"):
                w = h = size
            else:
                w, h = (size, side) if self.rng.random() < 0.5 else (side, size)
            if w > x_hi - x_lo or h > y_hi - y_lo:
                continue
            candidate = SceneObject(name, int(self.rng.integers(x_lo, x_hi - w + 1)),
                                    int(self.rng.integers(y_lo, y_hi - h + 1)), w, h)
            if not any(_overlap(candidate, other) for other in self.objects):
                self.objects.append(candidate)
                return candidate
        raise _Retry


class _Retry(Exception):
    """This layout failed; sample the scene again."""


def _overlap(a: SceneObject, b: SceneObject, gap: int = 3) -> bool:
    return (a.x0 < b.x0 + b.w + gap and b.x0 < a.x0 + a.w + gap
            and a.y0 < b.y0 + b.h + gap and b.y0 < a.y0 + a.h + gap)


# ---- scene sampling ---------------------------------------------------------------------------
def sample_scene(rng: np.random.Generator, scale: str, task: str, size: int = 112, frames: int = 4) -> Scene:
    """Geometry, question and exact answer of one clip (no pixels)."""
    for _ in range(20):
        try:
            return _try_scene(rng, scale, task, size, frames)
        except _Retry:
            continue
    raise RuntimeError(f"could not lay out a {task} scene at scale {scale} in a {size}px frame")


def _try_scene(rng: np.random.Generator, scale: str, task: str, size: int, frames: int) -> Scene:
    ppm = size / VIEW_M[scale] * rng.uniform(1 - PPM_JITTER, 1 + PPM_JITTER)
    pan = rng.uniform(0.15, 0.6) if task == "camera_displacement" else rng.uniform(0.0, 0.08)
    angle = rng.uniform(-math.pi / 9, math.pi / 9) + (math.pi if rng.random() < 0.5 else 0.0)
    dx, dy = round(pan * size * math.cos(angle)), round(pan * size * math.sin(angle))
    steps = [(round(k * dx / (frames - 1)), round(k * dy / (frames - 1))) for k in range(frames)]
    min_x, min_y = min(x for x, _ in steps), min(y for _, y in steps)
    offsets = [(x - min_x, y - min_y) for x, y in steps]
    scene = Scene(scale, task, size, ppm, (size + abs(dx), size + abs(dy)), offsets)
    if task == "camera_displacement":  # landmarks anywhere on the ground
        box = (1, scene.horizon + 2, scene.canvas[0] - 1, scene.canvas[1] - 1)
    else:  # the part of the ground every frame sees
        box = (max(x for x, _ in offsets) + 1, max(scene.horizon + 2, max(y for _, y in offsets) + 1),
               min(x for x, _ in offsets) + size - 1, min(y for _, y in offsets) + size - 1)
    QUESTIONS[task](scene, _Placer(rng, box, scene.objects), rng)
    return scene


def _names(rng: np.random.Generator, k: int) -> list[str]:
    return [NAMES[i] for i in rng.choice(len(NAMES), size=k, replace=False)]


def _length(rng: np.random.Generator, size: int, lo: float, hi: float) -> int:
    return round(rng.uniform(lo, hi) * size)


def _numeric(scene: Scene, metres: float, squared: bool = False) -> None:
    unit = scales.SCALE_BY_NAME[scene.scale].default_unit
    if squared:
        unit += "2"
        value = scales.convert(metres, "m2", unit)
    else:
        value = scales.convert(metres, "m", unit)
    scene.exact = value
    scene.answer = Answer(scales.AnswerType.NUMERIC.value, format_number(value), unit)


def _choice(scene: Scene, options: Sequence[str], correct: int) -> None:
    letters = scales.CHOICE_LETTERS
    choices = [f"{letters[i]}. {option}" for i, option in enumerate(options)]
    scene.question += " " + " ".join(choices)
    scene.exact = letters[correct]
    scene.answer = Answer(scales.AnswerType.CHOICE.value, letters[correct], None, choices)


def _place_target(scene: Scene, placer: _Placer, rng: np.random.Generator) -> tuple[str, SceneObject]:
    """One large named object and up to one smaller distractor."""
    target, *others = _names(rng, 1 + int(rng.integers(0, 2)))
    obj = placer.place(target, _length(rng, scene.size, 0.15, 0.5), rng.uniform(0.4, 1.0))
    for name in others:
        placer.place(name, _length(rng, scene.size, 0.1, 0.25), rng.uniform(0.4, 1.0))
    return target, obj


def _pose_object_size(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    target, obj = _place_target(scene, placer, rng)
    scene.question = f"How long is the {target}?"
    _numeric(scene, max(obj.w, obj.h) / scene.ppm)


def _pose_area(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    target, obj = _place_target(scene, placer, rng)
    scene.question = f"What is the area of the {target}?"
    _numeric(scene, obj.area_px / scene.ppm**2, squared=True)


def _pose_object_distance(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    a_name, b_name = _names(rng, 2)
    a = placer.place(a_name, _length(rng, scene.size, 0.08, 0.2), rng.uniform(0.5, 1.0))
    b = placer.place(b_name, _length(rng, scene.size, 0.08, 0.2), rng.uniform(0.5, 1.0))
    if a.distance_to(b) < 0.25 * scene.size:
        raise _Retry
    scene.question = f"How far is the {a_name} from the {b_name}?"
    _numeric(scene, a.distance_to(b) / scene.ppm)


def _pose_camera_displacement(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    for name in _names(rng, 2):
        placer.place(name, _length(rng, scene.size, 0.1, 0.2), rng.uniform(0.5, 1.0))
    (x0, y0), (x1, y1) = scene.offsets[0], scene.offsets[-1]
    scene.question = "How far does the camera move?"
    _numeric(scene, math.hypot(x1 - x0, y1 - y0) / scene.ppm)


def _pose_relative_direction(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    a_name, b_name = _names(rng, 2)
    a = placer.place(a_name, _length(rng, scene.size, 0.1, 0.25), rng.uniform(0.5, 1.0))
    b = placer.place(b_name, _length(rng, scene.size, 0.1, 0.25), rng.uniform(0.5, 1.0))
    if abs(a.center[0] - b.center[0]) < 0.2 * scene.size:
        raise _Retry
    scene.question = f"Is the {a_name} left or right of the {b_name}?"
    _choice(scene, ["left", "right"], 0 if a.center[0] < b.center[0] else 1)


def _pose_closer(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    ref_name, a_name, b_name = _names(rng, 3)
    ref = placer.place(ref_name, _length(rng, scene.size, 0.1, 0.2), rng.uniform(0.5, 1.0))
    a = placer.place(a_name, _length(rng, scene.size, 0.1, 0.2), rng.uniform(0.5, 1.0))
    b = placer.place(b_name, _length(rng, scene.size, 0.1, 0.2), rng.uniform(0.5, 1.0))
    da, db = ref.distance_to(a), ref.distance_to(b)
    if max(da, db) < 1.4 * min(da, db):
        raise _Retry
    scene.question = f"Which is closer to the {ref_name}?"
    _choice(scene, [a_name, b_name], 0 if da < db else 1)


def _pose_larger(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    a_name, b_name = _names(rng, 2)
    small = _length(rng, scene.size, 0.12, 0.28)
    big = min(round(small * rng.uniform(1.5, 2.0)), round(0.5 * scene.size))
    a_len, b_len = (small, big) if rng.random() < 0.5 else (big, small)
    a = placer.place(a_name, a_len, rng.uniform(0.7, 1.0))
    b = placer.place(b_name, b_len, rng.uniform(0.7, 1.0))
    if max(a.area_px, b.area_px) < 1.5 * min(a.area_px, b.area_px):
        raise _Retry
    scene.question = "Which is larger?"
    _choice(scene, [a_name, b_name], 0 if a.area_px > b.area_px else 1)


def _pose_count(scene: Scene, placer: _Placer, rng: np.random.Generator) -> None:
    target, distractor = _names(rng, 2)
    count = int(rng.integers(1, 5))
    for _ in range(count):
        placer.place(target, _length(rng, scene.size, 0.1, 0.2), rng.uniform(0.6, 1.0))
    if rng.random() < 0.5:
        placer.place(distractor, _length(rng, scene.size, 0.1, 0.2), rng.uniform(0.6, 1.0))
    scene.question = f"How many {target}s are there?"
    scene.exact = count
    scene.answer = Answer(scales.AnswerType.COUNT.value, str(count))


QUESTIONS = {  # task -> the function that poses its question on a scene
    "object_size": _pose_object_size, "area": _pose_area, "object_distance": _pose_object_distance,
    "camera_displacement": _pose_camera_displacement, "relative_direction": _pose_relative_direction,
    "closer": _pose_closer, "larger": _pose_larger, "count": _pose_count}


def format_number(value: float, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits, written without exponent or trailing zeros."""
    if value == 0:
        return "0"
    rounded = round(value, digits - 1 - math.floor(math.log10(abs(value))))
    return np.format_float_positional(rounded, trim="-")
