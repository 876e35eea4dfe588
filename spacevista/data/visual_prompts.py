"""Visual prompts (points, boxes, masks) drawn on frames, as the official SpaceVista loaders draw them.

``parse_visual_prompts`` reads an item's annotations into ``VisualPrompt`` s (frame = index into its
frame list), ``remap_to_sampled`` moves them onto the sampled frames, ``draw_visual_prompts`` draws them
on full-resolution frames. Shapes: SpaceVista-Bench (``input_type`` + ``annotations``; rules of
``eval/evaluate_api.py``) and the SpaceVista-1M preview (``extra_info``, nested or flattened by
``dataset/flatten.py``; rules of the training loader ``sft/.../mm_plugin.py``). Points come as [y, x].
Where the official sources disagree or misbehave:

- Colours go red, blue, green, yellow by position (a bench point or box may name its own). Bench
  ``dual_bbox``: source red, targets blue, green, yellow, red. Preview box pair: reference red,
  candidates red, blue, green, yellow in the given order, the palette the training loader repaints its
  candidate frame with (its pool permutes candidates from the third on). Preview masks: red, blue,
  green, then yellow for all further ones (training loader; the visualiser cycles).
- Every prompt is drawn; the training loader's reference-frame branch keeps only the first red and
  blue prompt of each kind, which we take for a bug.
- Masks come out opaque: the official overlay composites the colour at alpha 0.35 onto an RGBA copy,
  then converts to RGB, dropping that alpha. We reproduce those pixels.
- An out-of-frame point whose swap lies inside is drawn swapped (training loader). Boxes are clipped
  to the frame, their corners sorted.
- A preview list of boolean object ids is one channel selection (the training loader splits it).
- A bad annotation raises ``VisualPromptError`` naming the field where the official code falls back
  (frame 0, the last frame) or skips it. Masks are never unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (255, 0, 0), "blue": (0, 128, 255), "green": (0, 255, 0), "yellow": (255, 215, 0)}
COLOR_ORDER = tuple(COLORS)  # the order colours are handed out
_N_COORDS = {"point": 2, "box": 4, "mask": 0}
_PICKLE_ADVICE = ("pickled masks are refused; convert it once with "
                  "np.save('mask.npy', np.asarray(mask, dtype=bool)) (or an integer label map)")


class VisualPromptError(ValueError):
    """An annotation that cannot be read or drawn; the message names the field and what is wrong."""


@dataclass(frozen=True)
class VisualPrompt:
    """One prompt on one frame: a point (x, y), a box (x1, y1, x2, y2) in pixels, or a mask file."""

    kind: str
    frame: int
    color: str
    coords: tuple[float, ...] = ()
    mask_path: str | None = None
    object_ids: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _N_COORDS:
            raise VisualPromptError(f"kind: {self.kind!r} is not one of {tuple(_N_COORDS)}")
        if self.color not in COLORS:
            raise VisualPromptError(f"color: {self.color!r} is not one of {COLOR_ORDER}")
        if isinstance(self.frame, bool) or not isinstance(self.frame, int) or self.frame < 0:
            raise VisualPromptError(f"frame: {self.frame!r} is not a frame index")
        if len(self.coords) != _N_COORDS[self.kind]:
            raise VisualPromptError(f"coords: a {self.kind} needs {_N_COORDS[self.kind]} numbers, got {self.coords}")
        if (self.kind == "mask") != bool(self.mask_path):
            raise VisualPromptError(f"mask_path: {'needed' if self.kind == 'mask' else 'only for masks'}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, as stored in ``Record.meta["visual_prompts"]``."""
        return {"kind": self.kind, "frame": self.frame, "color": self.color, "coords": list(self.coords),
                "mask_path": self.mask_path,
                "object_ids": None if self.object_ids is None else list(self.object_ids)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisualPrompt:
        if not isinstance(data, dict) or not {"kind", "frame", "color"} <= data.keys():
            raise VisualPromptError(f"visual prompt {data!r}: needs kind, frame and color")
        ids = data.get("object_ids")
        return cls(kind=data["kind"], frame=data["frame"], color=data["color"],
                   coords=tuple(_number(c, "coords") for c in data.get("coords") or ()),
                   mask_path=data.get("mask_path"), object_ids=None if ids is None else tuple(ids))


def parse_visual_prompts(item: dict[str, Any], frame_paths: list[str]) -> list[VisualPrompt]:
    """The prompts of a bench item (``annotations``) or a preview item (``extra_info``), frames
    indexing ``frame_paths``; [] when it has none. Raises VisualPromptError on a bad annotation."""
    if item.get("annotations") is not None:
        return _parse_bench(item, frame_paths)
    extra = item.get("extra_info")
    return _parse_preview(extra, frame_paths) if isinstance(extra, dict) else []


def remap_to_sampled(prompts: Sequence[VisualPrompt], sampled_indices: Sequence[int]) -> list[VisualPrompt]:
    """Move each prompt to the position of the nearest sampled frame (the first, on a tie)."""
    if len(sampled_indices) == 0:
        raise VisualPromptError("sampled_indices: empty, nowhere to draw the prompts")
    return [VisualPrompt(p.kind, min(range(len(sampled_indices)), key=lambda i: abs(sampled_indices[i] - p.frame)),
                         p.color, p.coords, p.mask_path, p.object_ids) for p in prompts]


def draw_visual_prompts(frames: Sequence[Image.Image], prompts: Sequence[VisualPrompt],
                        mask_root: str | os.PathLike | None = None) -> list[Image.Image]:
    """RGB copies of ``frames`` with the prompts drawn: points and boxes in order, then masks (relative
    mask paths resolve against ``mask_root``). Sizes as the official code: dot radius max(8, 1.4%),
    box outline max(2, 0.4%) of the shorter side."""
    out = [frame.convert("RGB") for frame in frames]
    if any(p.frame >= len(out) for p in prompts):
        raise VisualPromptError(f"a prompt is on frame {max(p.frame for p in prompts)}; there are {len(out)} frames")
    for i, image in enumerate(out):
        here, (width, height) = [p for p in prompts if p.frame == i], image.size
        draw, side = ImageDraw.Draw(image), min(width, height)
        for p in here:
            if p.kind == "point":
                x, y = p.coords if 0 <= p.coords[0] < width and 0 <= p.coords[1] < height else p.coords[::-1]
                r = max(8, int(0.014 * side))
                if 0 <= x < width and 0 <= y < height:
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=COLORS[p.color], outline=COLORS[p.color], width=2)
            elif p.kind == "box":
                x1, x2 = (max(0.0, min(v, width - 1)) for v in p.coords[0::2])
                y1, y2 = (max(0.0, min(v, height - 1)) for v in p.coords[1::2])
                if x2 > 0 and y2 > 0:
                    draw.rectangle((x1, y1, x2, y2), outline=COLORS[p.color], width=max(2, int(0.004 * side)))
        for p in (p for p in here if p.kind == "mask"):
            path = Path(p.mask_path or "")
            path = path if path.is_absolute() or mask_root is None else Path(mask_root) / path
            # The official overlay composites the colour at alpha 0.35, then drops alpha: a solid fill.
            stencil = Image.fromarray(select_mask(load_mask(path), p.object_ids).astype(np.uint8) * 255)
            image.paste(COLORS[p.color], (0, 0, width, height),
                        mask=stencil.resize(image.size, resample=Image.Resampling.NEAREST))
    return out


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask array from .npy / .npz (first array) or an image file (a label map; colour images:
    nonzero in any channel). Pickles and object arrays are refused."""
    path = Path(path)
    _refuse_pickle_path(path, "mask_path")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise VisualPromptError(f"mask {path}: empty .npz archive")
                array = archive[archive.files[0]]
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
            if array.ndim == 3:
                array = array[..., :3 if array.shape[2] >= 3 else 1].any(axis=2)
    except (ValueError, OSError) as err:  # UnidentifiedImageError is an OSError
        problem = _PICKLE_ADVICE if "pickle" in str(err) else f"cannot read ({err})"
        raise VisualPromptError(f"mask {path}: {problem}") from None
    if array.dtype == object:
        raise VisualPromptError(f"mask {path}: {_PICKLE_ADVICE}")
    return array


def select_mask(array: np.ndarray, object_ids: Sequence[Any] | None) -> np.ndarray:
    """One HxW boolean mask, as the official ``select_mask_from_array``: a 2D bool mask is kept (empty if
    every id is falsy); a 2D label map keeps the listed labels (all nonzero without ids); a channel stack
    (HxWxK, or KxHxW with K < 16) keeps the listed channels, or a K-long bool list's True channels."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    ids = None if object_ids is None else list(object_ids)
    if array.ndim == 2:
        if array.dtype == bool:
            return array if ids is None or any(bool(x) for x in ids) else np.zeros_like(array)
        labels = _ints(ids or [])
        return np.isin(array, labels) if labels else array != 0
    if array.ndim != 3:
        raise VisualPromptError(f"mask has shape {array.shape}; expected HxW, HxWxK or KxHxW")
    if array.shape[0] < 16 and array.shape[0] != array.shape[1]:
        array = np.moveaxis(array, 0, 2)
    stack = array if array.dtype == bool else array != 0
    k = stack.shape[2]
    if ids is None:
        return stack.any(axis=2)
    if len(ids) == k and all(isinstance(x, (bool, np.bool_)) for x in ids):
        channels = [i for i, on in enumerate(ids) if on]
    elif any(isinstance(x, (bool, np.bool_)) and x for x in ids):
        return stack.any(axis=2)
    else:
        channels = [i for i in _ints([x for x in ids if not isinstance(x, (bool, np.bool_))]) if 0 <= i < k]
    return stack[:, :, channels].any(axis=2) if channels else stack.any(axis=2)


# ---- parsing ---------------------------------------------------------------------------------------

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


# ---- field readers ---------------------------------------------------------------------------------

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


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise VisualPromptError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _point(value: Any, where: str) -> tuple[float, float]:
    """[y, x] (or [[y, x]]) to (x, y)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not isinstance(value, list) or len(value) != 2:
        raise VisualPromptError(f"{where}: needs a point [y, x], got {value!r}")
    return _number(value[1], where), _number(value[0], where)


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    """A box dict {x1,y1,x2,y2} or {x,y,w,h}, or [x1, y1, x2, y2]; corners sorted."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict) and {"x1", "y1", "x2", "y2"} <= value.keys():
        x1, y1, x2, y2 = (_number(value[k], f"{where}.{k}") for k in ("x1", "y1", "x2", "y2"))
    elif isinstance(value, dict) and {"x", "y", "w", "h"} <= value.keys():
        x, y, w, h = (_number(value[k], f"{where}.{k}") for k in ("x", "y", "w", "h"))
        x1, y1, x2, y2 = x, y, x + w, y + h
    elif isinstance(value, list) and len(value) == 4:
        x1, y1, x2, y2 = (_number(v, where) for v in value)
    else:
        raise VisualPromptError(f"{where}: needs x1,y1,x2,y2 or x,y,w,h, got {value!r}")
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _mask(path: Any, object_ids: Any, frame: int, color: str, where: str) -> VisualPrompt:
    if not isinstance(path, str) or not path:
        raise VisualPromptError(f"{where}: needs a mask path, got {path!r}")
    _refuse_pickle_path(Path(path), where)
    if object_ids is not None and not isinstance(object_ids, list):
        object_ids = [object_ids]
    if object_ids is not None and not all(isinstance(x, (int, float, str)) for x in object_ids):
        raise VisualPromptError(f"{where}: object ids must be numbers, strings or booleans, got {object_ids!r}")
    return VisualPrompt("mask", frame, color, mask_path=path,
                        object_ids=None if object_ids is None else tuple(object_ids))


def _refuse_pickle_path(path: Path, where: str) -> None:
    if path.suffix.lower() in (".pkl", ".pickle"):
        raise VisualPromptError(f"{where}: {path}: {_PICKLE_ADVICE}")


def _ints(values: Sequence[Any]) -> list[int]:
    """The values that ``int()`` accepts, as ints (the official selection skips the others)."""
    return [int(v) for v in values if isinstance(v, (int, float)) or str(v).strip().lstrip("-").isdigit()]


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
