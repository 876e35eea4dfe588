"""Visual-prompt annotations as the official SpaceVista data writes them, read into `VisualPrompt`s (frame =
index into the item's frame list); `records.visual_prompts` draws them.

Shapes: SpaceVista-Bench (``input_type`` + ``annotations``; rules of ``eval/evaluate_api.py``) and the
SpaceVista-1M preview (``extra_info``, nested or flattened by ``dataset/flatten.py``; rules of the training
loader ``sft/.../mm_plugin.py``). Points come as [y, x]. Where the official sources disagree or misbehave:

- Colours go red, blue, green, yellow by position (a bench point or box may name its own). Bench
  ``dual_bbox``: source red, targets blue, green, yellow, red. Preview box pair: reference red,
  candidates red, blue, green, yellow in the given order, the palette the training loader repaints its
  candidate frame with (its pool permutes candidates from the third on). Preview masks: red, blue,
  green, then yellow for all further ones (training loader; the visualiser cycles).
- Every prompt is kept; the training loader's reference-frame branch keeps only the first red and
  blue prompt of each kind, which we take for a bug.
- A preview list of boolean object ids is one channel selection (the training loader splits it).
- A bad annotation raises ``VisualPromptError`` naming the field where the official code falls back
  (frame 0, the last frame) or skips it. Mask paths ending in .pkl / .pickle are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spacevista.records.visual_prompts import (
    COLOR_ORDER,
    COLORS,
    VisualPrompt,
    VisualPromptError,
    finite_number,
    refuse_pickle_path,
)


def parse_visual_prompts(item: dict[str, Any], frame_paths: list[str]) -> list[VisualPrompt]:
    """The prompts of a bench item (``annotations``) or a preview item (``extra_info``), frames
    indexing ``frame_paths``; [] when it has none. Raises VisualPromptError on a bad annotation."""
    if item.get("annotations") is not None:
        return _parse_bench(item, frame_paths)
    extra = item.get("extra_info")
    return _parse_preview(extra, frame_paths) if isinstance(extra, dict) else []


def _parse_bench(item: dict[str, Any], frames: list[str]) -> list[VisualPrompt]:
    """Points and boxes (frame by ``image_index``), masks and the dual box (frame by image path), each
    only when ``input_type`` names its kind."""
    annotations = _need(item["annotations"], dict, "annotations", "an object")
    input_type = str(item.get("input_type") or "").lower()
    out: list[VisualPrompt] = []
    for key, kind, word in (("points", "point", "point"), ("bboxes", "box", "bbox"), ("masks", "mask", "mask")):
        entries = _need(annotations.get(key) or [], list, f"annotations.{key}", "a list") if word in input_type else []
        for i, entry in enumerate(entries):
            where = f"annotations.{key}[{i}]"
            _need(entry, dict, where, "an object")
            if kind == "mask":
                frame = _frame_of(entry.get("image_path"), frames, f"{where}.image_path")
                out.append(_mask(entry.get("mask_path"), entry.get("object_ids"), frame, COLOR_ORDER[i % 4],
                                 f"{where}.mask_path"))
                continue
            color = entry.get("color") or COLOR_ORDER[i % 4]
            if color not in COLORS:
                raise VisualPromptError(f"{where}.color: {color!r} is not one of {COLOR_ORDER}")
            coords = (_point if kind == "point" else _box)(entry.get("coords"), f"{where}.coords")
            out.append(VisualPrompt(kind, _frame_at(entry.get("image_index"), frames, f"{where}.image_index"),
                                    color, coords))
    dual, where = annotations.get("dual_bbox"), "annotations.dual_bbox"
    if dual and "bbox" in input_type:
        _need(dual, dict, where, "an object")
        if dual.get("source_bbox"):
            out.append(VisualPrompt("box", _frame_of(dual.get("source_image"), frames, f"{where}.source_image"),
                                    "red", _box(dual["source_bbox"], f"{where}.source_bbox")))
        targets = _need(dual.get("target_bboxes") or [], list, f"{where}.target_bboxes", "a list")
        frame = _frame_of(dual.get("target_image"), frames, f"{where}.target_image") if targets else 0
        out += [VisualPrompt("box", frame, COLOR_ORDER[(j + 1) % 4], _box(b, f"{where}.target_bboxes[{j}]"))
                for j, b in enumerate(targets)]
    return out


def _parse_preview(extra: dict[str, Any], frames: list[str]) -> list[VisualPrompt]:
    """Nested keys first, then flattened ones, as the training loader looks them up."""
    point = _nested(extra, "input_point")
    found = (_fields(point, ("image_path", "points"), "extra_info.input_point.")
             or _fields(extra, ("point_image_path", "point_points"), "extra_info."))
    out: list[VisualPrompt] = []
    if found:
        (image_field, image), (points_field, points) = found
        if isinstance(points, list) and len(points) == 2 and all(isinstance(v, (int, float)) for v in points):
            points = [points]
        frame = _frame_of(image, frames, image_field)
        out += [VisualPrompt("point", frame, COLOR_ORDER[j % 4], _point(p, f"{points_field}[{j}]"))
                for j, p in enumerate(_need(points, list, points_field, "a list of [y, x] points"))]
    return out + _preview_boxes(extra, frames) + _preview_masks(extra, frames)


def _preview_boxes(extra: dict[str, Any], frames: list[str]) -> list[VisualPrompt]:
    nested = _nested(extra, "input_bbox")
    pair = ("image_path_1", "bbox_1", "image_path_2", "bboxes_2")
    found = ((_fields(nested, pair, "extra_info.input_bbox.") if all(k in nested for k in pair) else None)
             or _fields(extra, tuple(f"bbox_{k}" for k in pair), "extra_info."))
    if found:
        (ref_field, ref_image), (box_field, ref_box), (cand_field, cand_image), (cands_field, cands) = found
        ref = VisualPrompt("box", _frame_of(ref_image, frames, ref_field), "red", _box(ref_box, box_field))
        return [ref, *_boxes(cands, cands_field, _frame_of(cand_image, frames, cand_field))]
    found = (_fields(extra, ("bbox_image_path", "bbox_bboxes"), "extra_info.")
             or _fields(nested, ("image_path", "bboxes"), "extra_info.input_bbox."))
    if not found:
        return []
    (image_field, image), (boxes_field, boxes) = found
    return _boxes(boxes, boxes_field, _frame_of(image, frames, image_field))


def _boxes(value: Any, where: str, frame: int) -> list[VisualPrompt]:
    return [VisualPrompt("box", frame, COLOR_ORDER[j % 4], _box(b, f"{where}[{j}]"))
            for j, b in enumerate(_need(value, list, where, "a list of boxes"))]


def _preview_masks(extra: dict[str, Any], frames: list[str]) -> list[VisualPrompt]:
    """One mask per object id of one mask file, or one per mask file (with the id at its position)."""
    nested = _nested(extra, "input_mask")
    found, ids = _fields(nested, ("image_path", "mask_path"), "extra_info.input_mask."), nested.get("object_ids")
    if not found:
        found = _fields(extra, ("mask_image_path", "mask_mask_path"), "extra_info.")
        ids = _json(extra.get("mask_object_ids"), "extra_info.mask_object_ids")
    if not found:
        return []
    (image_field, image), (path_field, paths) = found
    frame = _frame_of(image, frames, image_field)
    if not isinstance(ids, list) or (ids and all(isinstance(x, bool) for x in ids)):
        ids = [ids]  # one selection: none, one id, or a list of booleans
    paths = paths if isinstance(paths, list) else [paths]
    pairs = ([(paths[0], oid, path_field) for oid in ids] if len(paths) == 1 else
             [(p, ids[j] if j < len(ids) else None, f"{path_field}[{j}]") for j, p in enumerate(paths)])
    return [_mask(path, oid, frame, COLOR_ORDER[min(j, 3)], field) for j, (path, oid, field) in enumerate(pairs)]


def _need(value: Any, kind: type, where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise VisualPromptError(f"{where}: needs {what}, got {value!r}")
    return value


def _nested(extra: dict[str, Any], key: str) -> dict[str, Any]:
    return _need(extra.get(key) or {}, dict, f"extra_info.{key}", "an object")


def _fields(source: dict[str, Any], keys: tuple[str, ...], prefix: str) -> list[tuple[str, Any]] | None:
    """(field name, value) of ``keys``, JSON text parsed; None when all are empty; raises when some are."""
    named = [(prefix + key, _json(source.get(key), prefix + key)) for key in keys]
    empty = [name for name, value in named if value is None or value in ("", [], {})]
    if empty and len(empty) < len(named):
        present = next(name for name, _ in named if name not in empty)
        raise VisualPromptError(f"{empty[0]}: missing or empty, but {present} is set")
    return None if empty else named


def _json(value: Any, where: str) -> Any:
    """A flattened field: a JSON list/object text parsed with json.loads (Python True/False tolerated)."""
    if not isinstance(value, str) or not value.lstrip().startswith(("[", "{")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        try:
            return json.loads(value.replace("True", "true").replace("False", "false"))
        except json.JSONDecodeError as err:
            raise VisualPromptError(f"{where}: not valid JSON ({err.msg})") from None


def _point(value: Any, where: str) -> tuple[float, float]:
    """[y, x] (or [[y, x]]) to (x, y)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not isinstance(value, list) or len(value) != 2:
        raise VisualPromptError(f"{where}: needs a point [y, x], got {value!r}")
    return finite_number(value[1], where), finite_number(value[0], where)


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    """A box dict {x1,y1,x2,y2} or {x,y,w,h}, or [x1, y1, x2, y2]; corners sorted."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict) and {"x1", "y1", "x2", "y2"} <= value.keys():
        x1, y1, x2, y2 = (finite_number(value[k], f"{where}.{k}") for k in ("x1", "y1", "x2", "y2"))
    elif isinstance(value, dict) and {"x", "y", "w", "h"} <= value.keys():
        x, y, w, h = (finite_number(value[k], f"{where}.{k}") for k in ("x", "y", "w", "h"))
        x1, y1, x2, y2 = x, y, x + w, y + h
    elif isinstance(value, list) and len(value) == 4:
        x1, y1, x2, y2 = (finite_number(v, where) for v in value)
    else:
        raise VisualPromptError(f"{where}: needs x1,y1,x2,y2 or x,y,w,h, got {value!r}")
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _mask(path: Any, object_ids: Any, frame: int, color: str, where: str) -> VisualPrompt:
    if not isinstance(path, str) or not path:
        raise VisualPromptError(f"{where}: needs a mask path, got {path!r}")
    refuse_pickle_path(Path(path), where)
    if object_ids is not None and not isinstance(object_ids, list):
        object_ids = [object_ids]
    if object_ids is not None and not all(isinstance(x, (int, float, str)) for x in object_ids):
        raise VisualPromptError(f"{where}: object ids must be numbers, strings or booleans, got {object_ids!r}")
    return VisualPrompt("mask", frame, color, mask_path=path,
                        object_ids=None if object_ids is None else tuple(object_ids))


def _frame_at(index: Any, frames: list[str], where: str) -> int:
    index = 0 if index is None else index
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(frames):
        raise VisualPromptError(f"{where}: {index!r} is not a frame index (the item has {len(frames)} frames)")
    return index


def _frame_of(image_path: Any, frames: list[str], where: str) -> int:
    """The frame ``image_path`` names: exact, absolute, /images_8/ <-> /images/, unique basename; none: 0."""
    if not image_path:
        return _frame_at(0, frames, where)
    if not isinstance(image_path, str):
        raise VisualPromptError(f"{where}: needs an image path, got {image_path!r}")
    if image_path in frames:
        return frames.index(image_path)
    absolute = [os.path.abspath(f) for f in frames]
    swaps = [image_path.replace(a, b) for a, b in (("/images_8/", "/images/"), ("/images/", "/images_8/"))
             if a in image_path]
    for candidate in [image_path, *swaps]:
        if os.path.abspath(candidate) in absolute:
            return absolute.index(os.path.abspath(candidate))
    same_name = [i for i, f in enumerate(frames) if os.path.basename(f) == os.path.basename(image_path)]
    if len(same_name) == 1:
        return same_name[0]
    problem = "matches several frames by name" if same_name else "is not one of the item's frames"
    raise VisualPromptError(f"{where}: {image_path!r} {problem}")
