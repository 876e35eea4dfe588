"""The Record: one spatial QA, as a Python dataclass and as an Arrow row (verl-compatible columns).

Columns (``SCHEMA``):

- ``id`` string, ``data_source`` string, ``scale`` (one of ``scales.SCALES``), ``task`` (one of
  ``scales.TASKS``).
- ``prompt`` list<struct<role, content>>: chat messages. ``<image>`` / ``<video>`` placeholders in
  the user messages, one per media item, in the order of ``images`` / ``videos``.
- ``images`` list<frame>, ``videos`` list<list<frame>> where frame = struct<bytes: binary, path:
  string>: exactly one of the two is set (inline PNG/JPEG bytes, or a file path).
- ``answer`` struct<type, value, unit, choices>: ``type`` is the task's ``AnswerType`` value;
  ``value`` is stored as a string (``Answer.typed_value`` converts); ``unit`` is a canonical unit
  symbol for numeric answers and null otherwise; ``choices`` are the option texts of a choice
  question ("A. left", "B. right") and empty otherwise; a choice answer is its letter.
- ``reward_model`` struct<style, ground_truth>: ``ground_truth`` is the JSON of
  ``Record.ground_truth_dict()`` (typed value: float, int or str), what a verl
  ``compute_score(data_source, solution_str, ground_truth, extra_info)`` receives. It is derived
  from ``answer``; ``from_row`` rejects a row whose stored ground truth disagrees.
- ``extra_info`` struct<index, split, scale, task, source_id, meta>: ``meta`` is a JSON object
  (string) for anything source-specific, e.g. ``reference``: an SFT target completion;
  ``output_format`` and ``count_metric``: how this dataset's completions are formatted and counts
  scored (copied into the ground truth; see ``grammar.truth``); ``visual_prompts``: points, boxes
  and masks drawn on the frames when they are decoded (``records.visual_prompts``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pyarrow as pa

from spacevista import scales

FRAME_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
ANSWER_TYPE = pa.struct([("type", pa.string()), ("value", pa.string()), ("unit", pa.string()),
                         ("choices", pa.list_(pa.string()))])
REWARD_MODEL_TYPE = pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
EXTRA_INFO_TYPE = pa.struct([("index", pa.int64()), ("split", pa.string()), ("scale", pa.string()),
                             ("task", pa.string()), ("source_id", pa.string()), ("meta", pa.string())])

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("data_source", pa.string()),
    ("scale", pa.string()),
    ("task", pa.string()),
    ("prompt", pa.list_(MESSAGE_TYPE)),
    ("images", pa.list_(FRAME_TYPE)),
    ("videos", pa.list_(pa.list_(FRAME_TYPE))),
    ("answer", ANSWER_TYPE),
    ("reward_model", REWARD_MODEL_TYPE),
    ("extra_info", EXTRA_INFO_TYPE),
])

ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER = "<image>", "<video>"
REWARD_STYLE = "rule"
_Fail = Callable[[str, str], NoReturn]


class RecordError(ValueError):
    """A record that breaks the schema; names the record id and the offending field."""

    def __init__(self, record_id: str, field_name: str, message: str):
        self.record_id, self.field, self.message = record_id, field_name, message
        super().__init__(f"record {record_id!r}, field {field_name!r}: {message}")


@dataclass(frozen=True)
class Frame:
    """One image or video frame: inline encoded bytes or a file path (relative to a dataset root allowed)."""

    bytes: bytes | None = None
    path: str | None = None


@dataclass
class Answer:
    """The ground truth: ``value`` as a string; ``unit`` for numeric answers; ``choices`` for choice answers."""

    type: str
    value: str
    unit: str | None = None
    choices: list[str] = field(default_factory=list)

    def typed_value(self) -> float | int | str:
        """float for numeric, int for count, the string otherwise (ValueError if it does not parse)."""
        if self.type == scales.AnswerType.NUMERIC.value:
            return float(self.value)
        if self.type == scales.AnswerType.COUNT.value:
            return int(self.value)
        return self.value

    def text(self) -> str:
        """The answer as a model should write it inside <answer></answer>: "12 cm", "3", "A"."""
        return f"{self.value} {self.unit}" if self.unit else self.value


@dataclass
class Record:
    """One spatial QA (see the module docstring for the column layout)."""

    id: str
    scale: str
    task: str
    prompt: list[dict[str, str]]
    answer: Answer
    data_source: str = "spacevista"
    images: list[Frame] = field(default_factory=list)
    videos: list[list[Frame]] = field(default_factory=list)
    split: str = "train"
    index: int = 0
    source_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def answer_dict(self) -> dict[str, Any]:
        """The answer with a typed value."""
        a = self.answer
        return {"type": a.type, "value": a.typed_value(), "unit": a.unit, "choices": list(a.choices)}

    def ground_truth_dict(self) -> dict[str, Any]:
        """What reward functions receive (as JSON) in ``reward_model.ground_truth``; the dataset's
        output format and count metric only where they differ from the defaults."""
        truth = {**self.answer_dict(), "scale": self.scale, "task": self.task}
        for key in ("output_format", "count_metric"):
            if self.meta.get(key):
                truth[key] = self.meta[key]
        return truth

    @property
    def output_format(self) -> scales.OutputFormat:
        return scales.OutputFormat(self.meta.get("output_format") or scales.OutputFormat.THINK_SCALE_ANSWER.value)

    def reference_completion(self) -> str:
        """The SFT target: the source's reference completion, else an empty reasoning and the answer."""
        return self.meta.get("reference") or scales.format_output("", self.scale, self.answer.text(),
                                                                  self.output_format)

    def ground_truth_json(self) -> str:
        return json.dumps(self.ground_truth_dict())

    def to_row(self) -> dict[str, Any]:
        """The Arrow row (a plain dict matching ``SCHEMA``)."""
        a = self.answer
        return {
            "id": self.id,
            "data_source": self.data_source,
            "scale": self.scale,
            "task": self.task,
            "prompt": [{"role": m["role"], "content": m["content"]} for m in self.prompt],
            "images": [_frame_row(f) for f in self.images],
            "videos": [[_frame_row(f) for f in video] for video in self.videos],
            "answer": {"type": a.type, "value": a.value, "unit": a.unit, "choices": list(a.choices)},
            "reward_model": {"style": REWARD_STYLE, "ground_truth": self.ground_truth_json()},
            "extra_info": self.extra_info(),
        }

    def extra_info(self) -> dict[str, Any]:
        """The `extra_info` column: what a verl `compute_score` (and our reward plugins) receive."""
        return {"index": self.index, "split": self.split, "scale": self.scale, "task": self.task,
                "source_id": self.source_id, "meta": json.dumps(self.meta, sort_keys=True, separators=(",", ":"))}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """Inverse of ``to_row``; raises RecordError if the row is incomplete or inconsistent."""
        record_id = str(row.get("id"))
        try:
            extra, a = row["extra_info"], row["answer"]
            record = cls(
                id=row["id"], scale=row["scale"], task=row["task"],
                prompt=[{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
                answer=Answer(type=a["type"], value=a["value"], unit=a["unit"], choices=list(a["choices"] or [])),
                data_source=row["data_source"],
                images=[Frame(f["bytes"], f["path"]) for f in row["images"] or []],
                videos=[[Frame(f["bytes"], f["path"]) for f in video] for video in row["videos"] or []],
                split=extra["split"], index=extra["index"], source_id=extra["source_id"] or "",
                meta=json.loads(extra["meta"] or "{}"),
            )
        except (KeyError, TypeError) as err:
            raise RecordError(record_id, str(err).strip("'"), "missing or malformed column") from None
        except json.JSONDecodeError as err:
            raise RecordError(record_id, "extra_info.meta", f"not JSON: {err}") from None
        if (extra["scale"], extra["task"]) != (record.scale, record.task):
            raise RecordError(record_id, "extra_info", "scale/task disagree with the scale/task columns")
        try:
            stored_truth = json.loads(row["reward_model"]["ground_truth"])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise RecordError(record_id, "reward_model.ground_truth", "missing or not JSON") from None
        record.validate()
        if stored_truth != record.ground_truth_dict():
            raise RecordError(record_id, "reward_model.ground_truth", "disagrees with the answer column")
        return record

    def validate(self) -> None:
        """Raise RecordError (naming this record and the field) unless the record is well-formed."""
        def fail(field_name: str, message: str) -> NoReturn:
            raise RecordError(self.id, field_name, message)

        if not isinstance(self.id, str) or not self.id:
            fail("id", "must be a non-empty string")
        if self.scale not in scales.SCALES:
            fail("scale", f"unknown scale {self.scale!r}; expected one of {list(scales.SCALES)}")
        if self.task not in scales.TASKS:
            fail("task", f"unknown task {self.task!r}; expected one of {list(scales.TASKS)}")
        if not self.split:
            fail("split", "must be a non-empty string")
        self._validate_prompt(fail)
        for i, frame in enumerate(self.images):
            _validate_frame(frame, f"images[{i}]", fail)
        for v, video in enumerate(self.videos):
            if not video:
                fail(f"videos[{v}]", "a video needs at least one frame")
            for i, frame in enumerate(video):
                _validate_frame(frame, f"videos[{v}][{i}]", fail)
        self._validate_answer(fail)
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as err:
            fail("extra_info.meta", f"not JSON-serialisable: {err}")
        if self.meta.get("output_format") not in (None, *(f.value for f in scales.OutputFormat)):
            fail("extra_info.meta.output_format", f"{self.meta['output_format']!r} is not one of "
                                                  f"{[f.value for f in scales.OutputFormat]}")
        if self.meta.get("count_metric") not in (None, "exact", "mra"):
            fail("extra_info.meta.count_metric", f"{self.meta['count_metric']!r} is not 'exact' or 'mra'")

    def _validate_prompt(self, fail: _Fail) -> None:
        if not self.prompt:
            fail("prompt", "needs at least one message")
        for i, message in enumerate(self.prompt):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                fail(f"prompt[{i}].role", f"must be one of {ROLES}")
            if not isinstance(message.get("content"), str):
                fail(f"prompt[{i}].content", "must be a string")
        user_text = "".join(m["content"] for m in self.prompt if m["role"] == "user")
        if not user_text:
            fail("prompt", "needs a non-empty user message")
        for placeholder, media, name in ((IMAGE_PLACEHOLDER, self.images, "images"),
                                         (VIDEO_PLACEHOLDER, self.videos, "videos")):
            if user_text.count(placeholder) != len(media):
                fail("prompt", f"{user_text.count(placeholder)} {placeholder} placeholder(s) for "
                               f"{len(media)} item(s) in {name}")

    def _validate_answer(self, fail: _Fail) -> None:
        a = self.answer
        spec = scales.TASK_BY_NAME[self.task]
        if a.type not in [t.value for t in spec.answer_types]:
            fail("answer.type", f"{a.type!r} but task {self.task!r} expects "
                                f"{' or '.join(repr(t.value) for t in spec.answer_types)}")
        if not isinstance(a.value, str) or not a.value.strip():
            fail("answer.value", "must be a non-empty string")
        if a.type == scales.AnswerType.NUMERIC.value:
            try:
                number = float(a.value)
            except ValueError:
                fail("answer.value", f"{a.value!r} is not a number")
            if not math.isfinite(number) or (number < 0 and spec.dimension != "angle"):
                fail("answer.value", f"{a.value!r} must be finite and non-negative")
            if scales.unit_dimension(a.unit or "") != spec.dimension:
                fail("answer.unit", f"{a.unit!r} is not a canonical {spec.dimension} unit")
        elif a.unit is not None:
            fail("answer.unit", f"must be null for a {a.type} answer")
        if a.type == scales.AnswerType.COUNT.value and not a.value.isdigit():
            fail("answer.value", f"{a.value!r} is not a non-negative integer")
        if a.type == scales.AnswerType.CHOICE.value:  # no choices: the options are in the question text
            if len(a.choices) == 1 or len(a.choices) > len(scales.CHOICE_LETTERS):
                fail("answer.choices", f"needs 2..{len(scales.CHOICE_LETTERS)} options, got {len(a.choices)}")
            letters = scales.CHOICE_LETTERS[:len(a.choices) or len(scales.CHOICE_LETTERS)]
            if a.value not in letters:
                fail("answer.value", f"{a.value!r} is not one of the option letters {list(letters)}")
        elif a.choices:
            fail("answer.choices", f"must be empty for a {a.type} answer")


def _frame_row(frame: Frame) -> dict[str, Any]:
    return {"bytes": frame.bytes, "path": frame.path}


def _validate_frame(frame: Frame, field_name: str, fail: _Fail) -> None:
    if not isinstance(frame, Frame) or (bool(frame.bytes) == bool(frame.path)):
        fail(field_name, "a frame needs exactly one of bytes or path")
