"""SpaceVista-1M and SpaceVista-Bench (JSON / JSONL, every documented shape) -> parquet Records,
reporting every record it cannot map.

Shapes and keys: `sources` (bench entries, full-set items, preview ``meta.json`` items, their
``flatten.py`` form, plain shareGPT items). Per item:

- scale: from the item's own keys (a scale name, the bench's category or scale symbol "mm"/"cm"/
  "m"/"<km", or a data group: Tiny Tabletop, Tabletop, Indoor, Wild Indoor, Outdoor, Drone), else
  ``default_scale`` (`--scale`/`--group`: for files that name none, like the preview).
- task: the official type names (``scales.TASK_BY_OFFICIAL``: all 19) or ``TASK_ALIASES``.
- frames: each video is sampled to ``num_frames`` uniformly (``np.linspace(0, n-1, k)``, as the
  bench's evaluation does; 0 keeps all); relative paths resolve against ``media_root`` (default: the
  source file's folder) and are stored absolute; every kept frame must exist.
- visual prompts (points, boxes, dual boxes, masks): read by ``annotations``, moved to the
  nearest kept frame and stored in ``meta["visual_prompts"]``; drawn whenever the frames are decoded.
- answer: ``answers`` (the answer grammar, `spacevista.grammar`); ``output_format`` (default SpaceVista's
  think/answer, the <scale> tag optional) and ``count_metric`` (default "mra", as the bench scores
  counts) go to ``meta`` and from there into the ground truth.
- prompt: the source's messages (a bench entry: its question with the bench's answer-format
  sentence); a system message with the format's instruction is added when the user text does not
  already ask for <answer> tags (``instruction=False``: never).

An item that cannot be mapped raises ``Reject`` with a reason from ``REJECT_REASONS``; whole files, the
rejects JSONL and the report are `files.convert_dataset`'s.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from spacevista import scales
from spacevista.datasets.official.annotations import parse_visual_prompts
from spacevista.datasets.official.answers import AnswerError, typed_answer
from spacevista.datasets.official.sources import (
    ANSWER_KEYS,
    CHOICE_KEYS,
    ID_KEYS,
    SCALE_KEYS,
    TASK_KEYS,
    SourceError,
    SourceItem,
    maybe_json,
    read_item,
)
from spacevista.records.frames import resolve_path
from spacevista.records.schema import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    Frame,
    Record,
    RecordError,
)
from spacevista.records.visual_prompts import VisualPromptError, remap_to_sampled

DATA_SOURCE = "spacevista_1m"
DEFAULT_NUM_FRAMES = 16  # SpaceVista-Bench's evaluation sends 16 frames a question
REJECT_REASONS: tuple[str, ...] = ("malformed_json", "malformed_messages", "missing_answer", "unknown_scale",
                                   "unknown_task", "missing_frame", "non_numeric_answer", "bad_unit", "bad_choice",
                                   "bad_visual_prompt", "invalid_record")

_norm = re.compile(r"[^a-z]")
# Other benchmarks' spellings (VSI-Bench and friends), normalised: lower case, letters only.
TASK_ALIASES: dict[str, str] = {
    **{_norm.sub("", t): t for t in scales.TASKS},
    **{_norm.sub("", official.lower()): task for official, task in scales.TASK_BY_OFFICIAL.items()},
    **dict.fromkeys(("length", "size", "objectsizeestimation", "objectsizes"), "object_size"),
    **dict.fromkeys(("objectabsdistance", "absdistance", "distance"), "object_distance"),
    **dict.fromkeys(("roomsizeestimation", "roomarea"), "room_size"),
    **dict.fromkeys(("objectcount",), "count"),
    **dict.fromkeys(("comparisonsize", "comparisonlength"), "larger"),
    **dict.fromkeys(("objectreldirection", "objectreldirectioneasy", "objectreldirectionmedium",
                     "objectreldirectionhard"), "relative_direction"),
    **dict.fromkeys(("objectreldistance", "comparisondistance"), "closer"),
    **dict.fromkeys(("cameramovingdistance", "cameradistance", "cameratranslation"), "camera_displacement"),
}
CHOICE_ANSWER_TYPES = frozenset({"mc", "mca", "choice", "multiplechoice", "multichoice", "option"})


class Reject(Exception):
    """An item that cannot become a Record: ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REJECT_REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class ConvertOptions:
    """How items become Records (see the module docstring)."""

    media_root: str | os.PathLike | None = None
    check_frames: bool = True
    data_source: str = DATA_SOURCE
    split: str = "train"
    instruction: bool = True
    default_scale: str | None = None  # a scale for items that name none (`--scale` / `--group`)
    output_format: scales.OutputFormat = scales.OutputFormat.THINK_ANSWER
    count_metric: str = "mra"
    num_frames: int = DEFAULT_NUM_FRAMES  # 0: keep every frame


# ---- one item ---------------------------------------------------------------------------------
def convert_item(item: Any, index: int, options: ConvertOptions = ConvertOptions()) -> Record:
    """Map one source item to a Record (raises Reject naming the reason)."""
    try:
        source = read_item(item)
        return _convert(source, index, options)
    except (SourceError, AnswerError) as err:
        raise Reject(err.reason, err.detail) from None
    except VisualPromptError as err:
        raise Reject("bad_visual_prompt", str(err)) from None


def _convert(source: SourceItem, index: int, options: ConvertOptions) -> Record:
    scale, group = _scale(source, options.default_scale)
    task, source_task = _task(source)
    sampled = [_sample_indices(len(video), options.num_frames) for video in source.videos]
    videos = [[_frame(video[i], options) for i in keep] for video, keep in zip(source.videos, sampled)]
    images = [_frame(path, options) for path in source.images]
    prompt = _with_placeholders(source.prompt, len(images), len(videos))
    question = "\n".join(m["content"] for m in prompt if m["role"] == "user")
    answer_text = _answer_text(source)
    answer, unit_assumed = typed_answer(task, scale, answer_text, question, unit=source.lookup(("unit",))[1],
                                        choices=source.lookup(CHOICE_KEYS)[1])
    _check_answer_type(task, answer.type, source.lookup(("answer_type",))[1])
    think = _tag(source.reply, scales.THINK_TAG) or ""
    if options.instruction and "<answer>" not in question.lower():
        prompt = _with_instruction(prompt, scales.OUTPUT_INSTRUCTIONS[options.output_format])
    meta: dict[str, Any] = {
        "source_task": source_task, "source_shape": source.shape, "source_answer": answer_text,
        "reference": scales.format_output(think, scale, answer.text(), options.output_format),
        "output_format": options.output_format.value, "count_metric": options.count_metric,
        "input_type": source.input_type,
        "question": re.sub(r"<(?:video|image)>\n?", "", question).strip()}
    if group:
        meta["group"] = group
    if unit_assumed:
        meta["unit_assumed"] = True
    if source.videos and len(sampled[0]) < len(source.videos[0]):
        meta["frame_indices"] = sampled[0]
    prompts = parse_visual_prompts(source.raw, source.videos[0] if source.videos else source.images)
    if prompts:
        if source.videos:
            prompts = remap_to_sampled(prompts, sampled[0])
        meta["visual_prompts"] = [_resolved_mask(p, options).to_dict() for p in prompts]
    source_id = source.source_id
    record = Record(id=source_id or f"{options.data_source}-{index:08d}", scale=scale, task=task, prompt=prompt,
                    answer=answer, data_source=options.data_source, images=images, videos=videos,
                    split=options.split, index=index, source_id=source_id, meta=meta)
    try:
        record.validate()
    except RecordError as err:
        raise Reject("invalid_record", str(err)) from None
    return record


def item_id(item: Any) -> str | None:
    """The id of a raw item, for the rejects report (None if it has none)."""
    if not isinstance(item, dict):
        return None
    for source in (maybe_json(item.get("extra_info")), maybe_json(item.get("metadata")), item):
        if isinstance(source, dict):
            found = next((source[k] for k in ID_KEYS if source.get(k) not in (None, "")), None)
            if found is not None:
                return str(found)
    return None


def _scale(source: SourceItem, default: str | None) -> tuple[str, str | None]:
    """(scale, the source's group/category as written, if any)."""
    key, raw = source.lookup(SCALE_KEYS)
    if raw is None:
        if default is None:
            raise Reject("unknown_scale", f"no scale in any of {list(SCALE_KEYS)}: pass --scale or --group "
                                          f"for a file that names none")
        return default, None
    scale = scales.canonical_scale(str(raw))
    if scale is None:
        raise Reject("unknown_scale", f"{key}={raw!r} is not a scale ({list(scales.SCALES)}), a bench category "
                                      f"or symbol, or a data group")
    return scale, str(raw)


def _task(source: SourceItem) -> tuple[str, str]:
    """(task, the source's spelling); the first key whose value maps wins."""
    seen = []
    for info in (source.info, source.raw):
        for key in TASK_KEYS:
            raw = info.get(key)
            if isinstance(raw, str) and raw:
                task = scales.TASK_BY_OFFICIAL.get(raw) or TASK_ALIASES.get(_norm.sub("", raw.lower()))
                if task:
                    return task, raw
                seen.append(f"{key}={raw!r}")
    raise Reject("unknown_task", f"no known task in {', '.join(seen) or 'any of ' + str(list(TASK_KEYS))}")


def _check_answer_type(task: str, answer_type: str, stated: Any) -> None:
    """A source that says its answer is multiple choice must get a choice answer, and vice versa."""
    if not isinstance(stated, str):
        return
    says_choice = _norm.sub("", stated.lower()) in CHOICE_ANSWER_TYPES
    if says_choice != (answer_type == scales.AnswerType.CHOICE.value):
        raise Reject("unknown_task", f"task {task!r} got a {answer_type} answer but answer_type is {stated!r}")


def _sample_indices(n: int, k: int) -> list[int]:
    return list(range(n)) if k <= 0 or n <= k else np.linspace(0, n - 1, k, dtype=int).tolist()


def _frame(path: str, options: ConvertOptions) -> Frame:
    resolved = resolve_path(path, options.media_root)
    if options.check_frames and not resolved.is_file():
        raise Reject("missing_frame", f"no file {resolved}")
    return Frame(path=os.path.abspath(resolved))


def _resolved_mask(prompt: Any, options: ConvertOptions) -> Any:
    if not prompt.mask_path:
        return prompt
    resolved = resolve_path(prompt.mask_path, options.media_root)
    if options.check_frames and not resolved.is_file():
        raise Reject("missing_frame", f"no mask file {resolved}")
    return replace(prompt, mask_path=os.path.abspath(resolved))


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


def _with_instruction(prompt: list[dict[str, str]], instruction: str) -> list[dict[str, str]]:
    if prompt[0]["role"] != "system":
        return [{"role": "system", "content": instruction}, *prompt]
    return [{"role": "system", "content": f"{prompt[0]['content']}\n{instruction}"}, *prompt[1:]]


def _tag(text: str | None, tag: str) -> str | None:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text or "", re.DOTALL | re.IGNORECASE)
    return match.group(1).strip() if match else None


def _answer_text(source: SourceItem) -> str:
    raw = source.lookup(ANSWER_KEYS)[1]
    if raw is None:
        raw = source.reply
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return np.format_float_positional(raw, trim="-") if isinstance(raw, float) else str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise Reject("missing_answer", "no ground_truth/answer/solution and no assistant reply")
    text = _tag(raw, scales.ANSWER_TAG)
    if text is None:
        text = re.sub(r"<think>.*?</think>", "", raw, flags=re.DOTALL | re.IGNORECASE).strip()
    if not text:
        raise Reject("missing_answer", "empty answer")
    return text


