"""The documented SpaceVista shapes, read into one `SourceItem` (the converter's input).

Shapes (detected per item, as the official repository documents them):

- ``bench``: a SpaceVista-Bench entry: ``id, input_type, question, answer, videos, annotations,
  metadata{category, scale, original_type}``; no messages. The prompt is the question with the
  bench's own answer-format suffix (``BENCH_SUFFIXES``, chosen by the answer as the bench's
  ``classify_answer_type`` does), so a model sees what the official evaluation sends.
- ``full``: a full SpaceVista-1M item: ``id, input_type, messages, videos, annotations, metadata{...}``.
- ``preview``: the Data-Preview ``meta.json`` item: ``messages``, ``videos`` (frame-path lists),
  ``extra_info`` with the task type, nested prompt annotations (``input_point``/``input_bbox``/
  ``input_mask``) and frame references.
- ``flattened``: the preview after the official ``flatten.py``: the nested annotations lifted into
  prefixed keys and every list or dict inside ``extra_info`` stored as a JSON string.
- ``sharegpt``: any other ``messages``/``conversations`` item (``extra_info`` optional, possibly a JSON string).

Keys (the first non-empty value wins; ``extra_info`` / ``metadata`` before the item itself):
``SCALE_KEYS`` (a scale name, the bench's category or scale symbol, or a data group such as
"Wild Indoor"), ``TASK_KEYS``, ``ANSWER_KEYS``, ``ID_KEYS``, ``CHOICE_KEYS``. Pure: no torch, no ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCALE_KEYS = ("group", "data_group", "category", "scale", "scene_scale", "scale_type", "scene_type")
TASK_KEYS = ("original_type", "task_type", "TaskType", "question_type", "task")
ANSWER_KEYS = ("ground_truth", "answer", "solution", "gt_answer", "gt")
ID_KEYS = ("id", "problem_id", "question_id", "uid")
CHOICE_KEYS = ("choices", "options", "candidates")
_ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_FLATTENED_KEYS = ("bbox_image_path", "bbox_bboxes", "point_image_path", "point_points", "mask_image_path",
                   "mask_mask_path", "bbox_image_path_1", "bbox_bbox_1")
_NESTED_KEYS = ("input_point", "input_bbox", "input_mask")
_MAX_JSON_CHARS = 1_000_000

# The answer-format sentences SpaceVista-Bench's evaluation appends to each question, by answer type.
BENCH_SUFFIXES: dict[str, str] = {
    "mc": ("Please provide the thinking process within the <think> </think> tags.\n"
           "Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."),
    "numerical": ("Please provide the thinking process within the <think> </think> tags.\n"
                  "Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."),
    "text": ("Please provide the thinking process within the <think> </think> tags.\n"
             "Please provide the answer within the <answer> </answer> tags."),
}


class SourceError(ValueError):
    """An item whose shape is not one of the documented ones; ``reason`` is a converter reject reason."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class SourceItem:
    """One item in the documented shapes, reduced to what a Record needs."""

    shape: str  # bench | full | preview | flattened | sharegpt
    raw: dict[str, Any]  # the item as read (visual prompts are parsed from it)
    info: dict[str, Any]  # extra_info / metadata (JSON strings parsed), looked up before the item itself
    prompt: list[dict[str, str]]  # the messages before the final assistant reply
    reply: str | None  # the final assistant reply, if any
    videos: list[list[str]] = field(default_factory=list)  # frame paths as the item names them
    images: list[str] = field(default_factory=list)

    def lookup(self, keys: tuple[str, ...]) -> tuple[str | None, Any]:
        """(key, value) of the first non-empty value under ``keys``, info first, then the item."""
        for source in (self.info, self.raw):
            for key in keys:
                if source.get(key) not in (None, "", [], {}):
                    return key, source[key]
        return None, None

    @property
    def source_id(self) -> str:
        return "" if (found := self.lookup(ID_KEYS)[1]) is None else str(found)

    @property
    def input_type(self) -> str:
        """The visual-prompt kind ("image_bbox_text", "Image+point+text"; "" when not stated)."""
        return str(self.lookup(("input_type",))[1] or "")


def classify_answer(answer: Any) -> str:
    """The bench's answer type of a ground truth: "mc" (a letter A-E), "numerical" (a float) or "text"."""
    text = str(answer).strip()
    if text in ("A", "B", "C", "D", "E"):
        return "mc"
    try:
        float(text)
    except ValueError:
        return "text"
    return "numerical"


def maybe_json(value: Any) -> Any:
    """A JSON string's value (``flatten.py`` stores lists and dicts so); anything else unchanged."""
    if isinstance(value, str) and value[:1] in "[{" and len(value) <= _MAX_JSON_CHARS:
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def read_item(item: Any) -> SourceItem:
    """Detect the shape of one item and read it (raises SourceError naming what is wrong)."""
    if not isinstance(item, dict):
        raise SourceError("malformed_json", f"item is a {type(item).__name__}, not a JSON object")
    info = _info(item)
    videos, images = _media(item)
    if "question" in item and not isinstance(item.get("messages", item.get("conversations")), list):
        return SourceItem("bench", item, info, _bench_prompt(item, len(videos), len(images)), None, videos, images)
    prompt, reply = _messages(item)
    if isinstance(item.get("metadata"), dict) or isinstance(item.get("annotations"), dict):
        shape = "full"
    elif any(key in info for key in _FLATTENED_KEYS):
        shape = "flattened"
    elif any(key in info for key in (*_NESTED_KEYS, "task_type", "input_type")):
        shape = "preview"  # an item without annotations reads the same before and after flatten.py
    else:
        shape = "sharegpt"
    return SourceItem(shape, item, info, prompt, reply, videos, images)


def _info(item: dict) -> dict[str, Any]:
    """``metadata`` and ``extra_info`` merged (extra_info wins), every JSON-string value parsed."""
    info: dict[str, Any] = {}
    for key in ("metadata", "extra_info"):
        value = maybe_json(item.get(key))
        if value is None:
            continue
        if not isinstance(value, dict):
            raise SourceError("malformed_json", f"{key} is a {type(value).__name__}, not an object")
        info.update({k: maybe_json(v) for k, v in value.items()})
    return info


def _bench_prompt(item: dict, n_videos: int, n_images: int) -> list[dict[str, str]]:
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise SourceError("malformed_messages", "bench entry: 'question' must be a non-empty string")
    if item.get("answer") in (None, ""):
        raise SourceError("missing_answer", "bench entry: no 'answer'")
    suffix = BENCH_SUFFIXES[classify_answer(item["answer"])]
    return [{"role": "user", "content": f"{question}\n\n{suffix}"}]


def _messages(item: dict) -> tuple[list[dict[str, str]], str | None]:
    raw = item.get("messages", item.get("conversations"))
    if not isinstance(raw, list) or not raw:
        raise SourceError("malformed_messages", "no 'messages' or 'conversations' list (and no bench 'question')")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise SourceError("malformed_messages", f"message {i} is not an object")
        role = _ROLE_ALIASES.get(str(message.get("role", message.get("from", ""))).lower())
        content = message.get("content", message.get("value"))
        if role is None or not isinstance(content, str):
            raise SourceError("malformed_messages", f"message {i} needs a known role and string content")
        messages.append({"role": role, "content": content})
    reply = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise SourceError("malformed_messages", "no user message before the answer")
    return messages, reply


def _media(item: dict) -> tuple[list[list[str]], list[str]]:
    videos = item.get("videos", item.get("video")) or []
    if isinstance(videos, str):
        videos = [[videos]]
    elif isinstance(videos, list) and videos and all(isinstance(v, str) for v in videos):
        videos = [videos]
    images = item.get("images") or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(videos, list) or not all(isinstance(v, list) and v for v in videos):
        raise SourceError("malformed_json", "videos must be non-empty lists of frame paths")
    if not isinstance(images, list):
        raise SourceError("malformed_json", "images must be a list of paths")
    for path in [p for v in videos for p in v] + images:
        if not isinstance(path, str) or not path:
            raise SourceError("malformed_json", f"frame path {path!r} is not a non-empty string")
    return videos, images
