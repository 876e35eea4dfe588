"""SpaceVista-1M (shareGPT-like JSON / JSONL) -> parquet Records, reporting every record it cannot map.

Accepted item layout (the SpaceVista/Data-Preview card, and the variants seen in the wild):

- ``messages`` [{"role": "user"|"assistant"|"system", "content": str}] or ``conversations``
  [{"from": "human"|"gpt"|"system", "value": str}]. The prompt is every message before the final
  assistant message; that message (``<answer>`` tag contents if tagged) is the fallback answer.
- media: ``videos`` (list of frame-path lists; a flat list of paths is one video), ``video`` (one
  video), ``images`` (paths). Relative paths resolve against ``media_root`` and are stored absolute;
  every frame file must exist. Placeholders (``<video>``/``<image>``) are prepended to the first
  user message when the source has none.
- ``extra_info`` (dict or JSON string; top-level keys are looked up as a fallback): scale from
  ``scale``/``category``/..., mapped by ``scales.canonical_scale``; task from ``task``/
  ``question_type``/``original_type``/``task_type`` via ``TASK_ALIASES``; answer from
  ``ground_truth``/``answer``/``solution``; ``unit``; ``choices``/``options``; id from
  ``id``/``problem_id``.
- the prompt gets a system message with ``scales.OUTPUT_INSTRUCTION`` (appended to the source's own
  system message if it has one), as synthetic records do; ``instruction=False`` keeps the source's.
- numeric answers: "3.5 m", "350cm", "12 square meters", or a bare number whose unit comes from
  ``unit``, else from the question ("in meters"), else the scale's default unit (``meta.unit_assumed``).

A record that cannot be mapped goes to the rejects JSONL as {index, id, reason, detail, source}, reason
one of ``REJECT_REASONS``. Shards are staged and published only when the reject fraction is at most
``max_reject_fraction``; otherwise ``TooManyRejects`` is raised after the rejects file is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spacevista import scales
from spacevista.data.frames import resolve_path
from spacevista.data.io import write_records
from spacevista.data.schema import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Answer, Frame, Record, RecordError

DATA_SOURCE = "spacevista_1m"
REJECT_REASONS: tuple[str, ...] = ("malformed_json", "malformed_messages", "missing_answer", "unknown_scale",
                                   "unknown_task", "missing_frame", "non_numeric_answer", "bad_unit", "bad_choice",
                                   "invalid_record")

SCALE_KEYS = ("scale", "category", "scene_scale", "scale_type", "scene_type")
TASK_KEYS = ("task", "question_type", "original_type", "task_type", "TaskType")
ANSWER_KEYS = ("ground_truth", "answer", "solution", "gt_answer", "gt")
ID_KEYS = ("id", "problem_id", "question_id", "uid")
CHOICE_KEYS = ("choices", "options", "candidates")

# Task spellings of SpaceVista-Bench, VSI-Bench and friends (normalised: lower case, letters only).
TASK_ALIASES: dict[str, str] = {
    **{re.sub(r"[^a-z]", "", t): t for t in scales.TASKS},
    **dict.fromkeys(("width", "height", "length", "size", "objectsizeestimation", "objectsizes"), "object_size"),
    **dict.fromkeys(("objectabsdistance", "absdistance", "distance", "depth", "depthall",
                     "objectrelativedistance"), "object_distance"),
    **dict.fromkeys(("roomsize", "roomsizeestimation", "roomarea"), "area"),
    **dict.fromkeys(("counting", "objectcounting", "objectcount"), "count"),
    **dict.fromkeys(("comparisonheight", "comparisonwidth", "comparisonsize", "comparisonlength"), "larger"),
    **dict.fromkeys(("spatialrelation", "positionacrossframe", "objectreldirection", "objectreldirectioneasy",
                     "objectreldirectionmedium", "objectreldirectionhard"), "relative_direction"),
    **dict.fromkeys(("objectreldistance", "comparisondistance"), "closer"),
    **dict.fromkeys(("cameramovingdistance", "cameradistance", "cameratranslation"), "camera_displacement"),
}
CHOICE_ANSWER_TYPES = frozenset({"mc", "mca", "choice", "multiplechoice", "multichoice", "option"})
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_UNIT_WORDS: dict[str, str] = {
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), "mm"),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), "cm"),
    **dict.fromkeys(("dm", "decimeter", "decimeters", "decimetre", "decimetres"), "dm"),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), "m"),
    **dict.fromkeys(("km", "kilometer", "kilometers", "kilometre", "kilometres"), "km"),
    **dict.fromkeys(("in", "inch", "inches", '"'), "in"),
    **dict.fromkeys(("ft", "foot", "feet", "'"), "ft"),
    **dict.fromkeys(("yd", "yard", "yards"), "yd"),
    **dict.fromkeys(("mi", "mile", "miles"), "mi"),
    **dict.fromkeys(("ha", "hectare", "hectares"), "ha"),
    **{unit: unit for unit in scales.AREA_UNITS},
}
_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_UNIT_RE = re.compile(r"\s*(square\s+|sq\.?\s*)?([a-z]+\d?|\"|')(\s*\^\s*2|²|\s+squared)?(?![a-z])")
_QUESTION_UNIT_RE = re.compile(r"\bin\s+(?:units\s+of\s+)?((?:square\s+|sq\.?\s*)?[a-z]+(?:\s*\^\s*2|²)?)")
_LETTERS = f"[{scales.CHOICE_LETTERS}]"
_LETTER_RE = re.compile(rf"^\(?({_LETTERS})\)?(?:[.):,\s]|$)")
_OPTION_RE = re.compile(rf"(?:^|\s)\(?({_LETTERS})[.)]\s+(.+?)(?=\s+\(?{_LETTERS}[.)]\s|$)", re.MULTILINE)
_ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


class Reject(Exception):
    """An item that cannot become a Record: ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REJECT_REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class TooManyRejects(RuntimeError):
    """More records were rejected than the configured maximum fraction allows."""


@dataclass
class ConversionReport:
    total: int = 0
    converted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    scales: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    rejects_path: Path | None = None
    shards: list[Path] = field(default_factory=list)

    @property
    def reject_fraction(self) -> float:
        return sum(self.rejected.values()) / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "converted": self.converted, "rejected": dict(sorted(self.rejected.items())),
                "reject_fraction": self.reject_fraction, "scales": dict(sorted(self.scales.items())),
                "tasks": dict(sorted(self.tasks.items())), "rejects_path": str(self.rejects_path),
                "shards": [str(s) for s in self.shards]}


# ---- one item ---------------------------------------------------------------------------------
def convert_item(item: Any, index: int, *, media_root: str | os.PathLike | None = None, check_frames: bool = True,
                 data_source: str = DATA_SOURCE, split: str = "train", instruction: bool = True) -> Record:
    """Map one source item to a Record (raises Reject); ``instruction`` adds the output format to the system message."""
    if not isinstance(item, dict):
        raise Reject("malformed_json", f"item is a {type(item).__name__}, not a JSON object")
    extra = _extra_info(item)
    found_id = _lookup(item, extra, ID_KEYS)
    source_id = "" if found_id is None else str(found_id)
    prompt, reply = _messages(item)
    scale = _scale(item, extra)
    task, source_task = _task(item, extra)
    images, videos = _media(item, media_root, check_frames)
    prompt = _with_placeholders(prompt, len(images), len(videos))
    question = "\n".join(m["content"] for m in prompt if m["role"] == "user")
    answer_text = _answer_text(item, extra, reply)
    answer, unit_assumed = _answer(task, scale, answer_text, question, item, extra)
    think = _tag(reply, scales.THINK_TAG) or ""
    if instruction:
        prompt = _with_instruction(prompt)
    meta = {"source_task": source_task, "reference": scales.format_output(think, scale, answer.text()),
            "source_extra_info": extra}
    if unit_assumed:
        meta["unit_assumed"] = True
    record = Record(id=source_id or f"{data_source}-{index:08d}", scale=scale, task=task, prompt=prompt, answer=answer,
                    data_source=data_source, images=images, videos=videos, split=split, index=index,
                    source_id=source_id, meta=meta)
    try:
        record.validate()
    except RecordError as err:
        raise Reject("invalid_record", str(err)) from None
    return record


def _extra_info(item: dict) -> dict:
    extra = item.get("extra_info") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            raise Reject("malformed_json", "extra_info is a string but not JSON") from None
    if not isinstance(extra, dict):
        raise Reject("malformed_json", f"extra_info is a {type(extra).__name__}, not an object")
    return extra


def _item_id(item: Any) -> str | None:
    """The source id of an item, if it has one (for the rejects report)."""
    if not isinstance(item, dict):
        return None
    extra = item.get("extra_info") if isinstance(item.get("extra_info"), dict) else {}
    found = _lookup(item, extra, ID_KEYS)
    return None if found is None else str(found)


def _lookup(item: dict, extra: dict, keys: Sequence[str]) -> Any:
    """The first non-empty value under ``keys``, extra_info first, then the item itself."""
    for source in (extra, item):
        for key in keys:
            if source.get(key) not in (None, "", []):
                return source[key]
    return None


def _messages(item: dict) -> tuple[list[dict[str, str]], str | None]:
    """(prompt messages, final assistant reply or None)."""
    raw = item.get("messages", item.get("conversations"))
    if not isinstance(raw, list) or not raw:
        raise Reject("malformed_messages", "no 'messages' or 'conversations' list")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise Reject("malformed_messages", f"message {i} is not an object")
        role = _ROLE_ALIASES.get(str(message.get("role", message.get("from", ""))).lower())
        content = message.get("content", message.get("value"))
        if role is None or not isinstance(content, str):
            raise Reject("malformed_messages", f"message {i} needs a known role and string content")
        messages.append({"role": role, "content": content})
    reply = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise Reject("malformed_messages", "no user message before the answer")
    return messages, reply


def _scale(item: dict, extra: dict) -> str:
    raw = _lookup(item, extra, SCALE_KEYS)
    scale = scales.canonical_scale(str(raw)) if raw is not None else None
    if scale is None:
        raise Reject("unknown_scale", f"scale {raw!r} is not one of {list(scales.SCALES)} or their spellings")
    return scale


def _task(item: dict, extra: dict) -> tuple[str, str]:
    """(task, the source's spelling); the first key whose value maps wins."""
    seen = []
    for source in (extra, item):
        for key in TASK_KEYS:
            raw = source.get(key)
            if isinstance(raw, str) and raw:
                task = TASK_ALIASES.get(re.sub(r"[^a-z]", "", raw.lower()))
                if task:
                    _check_answer_type(task, raw, extra.get("answer_type", item.get("answer_type")))
                    return task, raw
                seen.append(f"{key}={raw!r}")
    raise Reject("unknown_task", f"no known task in {', '.join(seen) or 'any of ' + str(list(TASK_KEYS))}")


def _check_answer_type(task: str, raw: str, answer_type: Any) -> None:
    if not isinstance(answer_type, str):
        return
    says_choice = re.sub(r"[^a-z]", "", answer_type.lower()) in CHOICE_ANSWER_TYPES
    is_choice = scales.TASK_BY_NAME[task].answer_type is scales.AnswerType.CHOICE
    if says_choice != is_choice:
        raise Reject("unknown_task", f"task {raw!r} maps to {task!r} ({scales.TASK_BY_NAME[task].answer_type.value}) "
                                     f"but answer_type is {answer_type!r}")


def _media(item: dict, media_root: str | os.PathLike | None, check: bool) -> tuple[list[Frame], list[list[Frame]]]:
    videos = item.get("videos", item.get("video")) or []
    if isinstance(videos, str):
        videos = [[videos]]
    elif videos and all(isinstance(v, str) for v in videos):
        videos = [videos]
    images = item.get("images") or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(videos, list) or not all(isinstance(v, list) and v for v in videos):
        raise Reject("malformed_json", "videos must be lists of frame paths")
    if not isinstance(images, list):
        raise Reject("malformed_json", "images must be a list of paths")
    return ([_frame(p, media_root, check) for p in images],
            [[_frame(p, media_root, check) for p in video] for video in videos])


def _frame(path: Any, media_root: str | os.PathLike | None, check: bool) -> Frame:
    if not isinstance(path, str) or not path:
        raise Reject("malformed_json", f"frame path {path!r} is not a string")
    resolved = resolve_path(path, media_root)
    if check and not resolved.is_file():
        raise Reject("missing_frame", f"no file {resolved}")
    return Frame(path=os.path.abspath(resolved))


def _with_placeholders(prompt: list[dict[str, str]], n_images: int, n_videos: int) -> list[dict[str, str]]:
    user_text = "".join(m["content"] for m in prompt if m["role"] == "user")
    found = (user_text.count(IMAGE_PLACEHOLDER), user_text.count(VIDEO_PLACEHOLDER))
    if found == (n_images, n_videos):
        return prompt
    if found != (0, 0):
        raise Reject("malformed_messages", f"{found[0]} <image> and {found[1]} <video> placeholders for "
                                           f"{n_images} image(s) and {n_videos} video(s)")
    first_user = next(i for i, m in enumerate(prompt) if m["role"] == "user")
    prefix = VIDEO_PLACEHOLDER * n_videos + IMAGE_PLACEHOLDER * n_images + "\n"
    prompt = [dict(m) for m in prompt]
    prompt[first_user]["content"] = prefix + prompt[first_user]["content"]
    return prompt


def _with_instruction(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    if prompt[0]["role"] != "system":
        return [{"role": "system", "content": scales.OUTPUT_INSTRUCTION}, *prompt]
    return [{"role": "system", "content": f"{prompt[0]['content']}\n{scales.OUTPUT_INSTRUCTION}"}, *prompt[1:]]


def _tag(text: str | None, tag: str) -> str | None:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text or "", re.DOTALL)
    return match.group(1).strip() if match else None


def _answer_text(item: dict, extra: dict, reply: str | None) -> str:
    raw = _lookup(item, extra, ANSWER_KEYS)
    if raw is None:
        raw = reply
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise Reject("missing_answer", "no ground_truth/answer/solution and no assistant reply")
    text = _tag(raw, scales.ANSWER_TAG)
    if text is None:
        text = re.sub(r"<think>.*?</think>", "", raw, flags=re.DOTALL).strip()
    if not text:
        raise Reject("missing_answer", "empty answer")
    return text


# ---- answers ----------------------------------------------------------------------------------
def _answer(task: str, scale: str, text: str, question: str, item: dict, extra: dict) -> tuple[Answer, bool]:
    """(Answer, whether the unit was assumed from the scale)."""
    kind = scales.TASK_BY_NAME[task].answer_type
    if kind is scales.AnswerType.NUMERIC:
        return _numeric_answer(task, scale, text, question, extra)
    if kind is scales.AnswerType.COUNT:
        return Answer(kind.value, str(_count(text))), False
    if kind is scales.AnswerType.CHOICE:
        choices = _choices(item, extra, question)
        return Answer(kind.value, _choice_letter(text, choices), None, choices), False
    return Answer(kind.value, text), False


def parse_quantity(text: str) -> tuple[float, str | None]:
    """The first number in ``text`` and the canonical unit after it: "3.5 m" -> (3.5, "m"); unit None if absent."""
    match = _NUMBER_RE.search(text)
    if not match:
        raise Reject("non_numeric_answer", f"no number in {text!r}")
    value = float(match.group().replace(",", ""))
    return value, _unit(text[match.end():])


def _unit(text: str) -> str | None:
    """Canonical unit at the start of ``text`` (None if there is no unit word; Reject if it is unknown)."""
    match = _UNIT_RE.match(text.lower())
    if not match:
        return None
    square, word, power = match.groups()
    unit = _UNIT_WORDS.get(word)
    if unit is None:
        return None
    if square or power:
        unit = unit if unit in scales.AREA_UNITS else f"{unit}2"
        if unit not in scales.AREA_UNITS:
            raise Reject("bad_unit", f"unknown area unit in {text.strip()!r}")
    return unit


def _numeric_answer(task: str, scale: str, text: str, question: str, extra: dict) -> tuple[Answer, bool]:
    value, unit = parse_quantity(text)
    unit_assumed = False
    if unit is None and isinstance(extra.get("unit"), str):
        unit = _unit(extra["unit"])
    if unit is None:
        unit = next(filter(None, (_unit(m.group(1)) for m in _QUESTION_UNIT_RE.finditer(question.lower()))), None)
    dimension = scales.TASK_BY_NAME[task].dimension
    if unit is None:
        unit, unit_assumed = scales.SCALE_BY_NAME[scale].default_unit, True
    if dimension == "area" and scales.unit_dimension(unit) == "length" and f"{unit}2" in scales.AREA_UNITS:
        unit = f"{unit}2"  # "25 m" for a room size means square metres
    if scales.unit_dimension(unit) != dimension:
        raise Reject("bad_unit", f"{unit!r} in {text!r} is not a {dimension} unit")
    return Answer(scales.AnswerType.NUMERIC.value, np.format_float_positional(value, trim="-"), unit), unit_assumed


def _count(text: str) -> int:
    word = text.strip().lower().rstrip(".")
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    match = _NUMBER_RE.search(text)
    if match:
        value = float(match.group().replace(",", ""))
        if value >= 0 and value == int(value):
            return int(value)
    raise Reject("non_numeric_answer", f"count answer {text!r} is not a non-negative integer")


def _choices(item: dict, extra: dict, question: str) -> list[str]:
    """Options as "A. text", from choices/options (extra_info or item) or else parsed from the question."""
    raw = _lookup(item, extra, CHOICE_KEYS)
    letters = scales.CHOICE_LETTERS
    if isinstance(raw, dict):
        options = [f"{k}. {v}" for k, v in sorted(raw.items())]
    elif isinstance(raw, list) and all(isinstance(o, str) for o in raw):
        options = [o if _LETTER_RE.match(o) else f"{letters[i]}. {o}" for i, o in enumerate(raw[:len(letters)])]
    else:
        options = [f"{letter}. {text.strip()}" for letter, text in _OPTION_RE.findall(question)]
    if len(options) < 2:
        raise Reject("bad_choice", "fewer than two options in choices/options or the question")
    return options


def _choice_letter(text: str, choices: list[str]) -> str:
    letters = scales.CHOICE_LETTERS[:len(choices)]
    match = _LETTER_RE.match(text.strip())
    if match:
        if match.group(1) not in letters:
            raise Reject("bad_choice", f"answer {text!r} is not one of the letters {list(letters)}")
        return match.group(1)
    bodies = [re.sub(rf"^\(?{_LETTERS}[.)]\s*", "", c).strip().lower() for c in choices]
    if text.strip().lower() in bodies:
        return letters[bodies.index(text.strip().lower())]
    raise Reject("bad_choice", f"answer {text!r} matches no option of {choices}")


# ---- files ------------------------------------------------------------------------------------
def iter_source(path: str | os.PathLike) -> Iterator[Any]:
    """Items of a JSON list file or a JSONL file; an unparsable JSONL line yields a Reject."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        yield from data
        return
    if isinstance(data, dict):  # a single record (or a one-line JSONL file)
        yield data
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                yield Reject("malformed_json", f"{p.name} line {number}: {err}")


def convert_dataset(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
            media_root: str | os.PathLike | None = None, max_reject_fraction: float = 0.05,
            shard_size: int = 10_000, rejects_path: str | os.PathLike | None = None, check_frames: bool = True,
            data_source: str = DATA_SOURCE, split: str = "train", instruction: bool = True,
            overwrite: bool = False) -> ConversionReport:
    """Convert source files to ``out_dir/part-*.parquet``; rejects go to ``rejects_path`` (default
    ``out_dir/rejects.jsonl``) and a summary to ``out_dir/conversion.json``.

    Raises TooManyRejects (after writing the rejects file, publishing no shards) when the fraction of
    rejected items exceeds ``max_reject_fraction``.
    """
    out = Path(out_dir)
    if any(out.glob("*.parquet")) and not overwrite:
        raise FileExistsError(f"{out} already holds parquet files; pass overwrite=True")
    report = ConversionReport(rejects_path=Path(rejects_path) if rejects_path else out / "rejects.jsonl")
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    report.rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with open(report.rejects_path, "w", encoding="utf-8") as rejects:
        def records() -> Iterator[Record]:
            for source in inputs:
                for item in iter_source(source):
                    index = report.total
                    report.total += 1
                    try:
                        if isinstance(item, Reject):
                            raise item
                        record = convert_item(item, index, media_root=media_root, check_frames=check_frames,
                                              data_source=data_source, split=split, instruction=instruction)
                    except Reject as reject:
                        report.rejected[reject.reason] += 1
                        rejects.write(json.dumps({"index": index, "id": _item_id(item), "reason": reject.reason,
                                                  "detail": reject.detail, "source": str(source)}) + "\n")
                        continue
                    except Exception as err:  # a shape of data no rule anticipates: say where it is
                        raise RuntimeError(f"{source}, item {index} (id {_item_id(item)!r}): {err!r}") from err
                    report.converted += 1
                    report.scales[record.scale] += 1
                    report.tasks[record.task] += 1
                    yield record

        staged = write_records(records(), staging, rows_per_shard=shard_size, validate=False)
    if report.reject_fraction > max_reject_fraction:
        shutil.rmtree(staging)
        raise TooManyRejects(f"{sum(report.rejected.values())} of {report.total} records rejected "
                             f"({report.reject_fraction:.1%} > max {max_reject_fraction:.1%}); by reason "
                             f"{dict(report.rejected)}; see {report.rejects_path}")
    for stale in out.glob("part-*.parquet"):
        stale.unlink()
    report.shards = [staged_file.replace(out / staged_file.name) for staged_file in staged]
    staging.rmdir()
    (out / "conversion.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
