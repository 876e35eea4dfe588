"""Visual prompts (points, boxes, masks) on a record's frames, drawn as the official SpaceVista loaders draw them.

A record keeps its prompts as ``VisualPrompt`` dicts (frame = index into its frame list); ``remap_to_sampled``
moves them onto the sampled frames and ``draw_visual_prompts`` draws them on full-resolution frames whenever
the frames are decoded (`records.frames`). Reading them from the official annotation shapes is the converter's
(`datasets.official.annotations`). Drawing rules where the official sources disagree or misbehave:

- Masks come out opaque: the official overlay composites the colour at alpha 0.35 onto an RGBA copy,
  then converts to RGB, dropping that alpha. We reproduce those pixels.
- An out-of-frame point whose swap lies inside is drawn swapped (training loader). Boxes are clipped
  to the frame, their corners sorted.
- Masks are never unpickled: .pkl / .pickle paths and object arrays are refused with the command that converts one.
"""

from __future__ import annotations

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
                   coords=tuple(finite_number(c, "coords") for c in data.get("coords") or ()),
                   mask_path=data.get("mask_path"), object_ids=None if ids is None else tuple(ids))


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
    refuse_pickle_path(path, "mask_path")
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


# ---- field readers ---------------------------------------------------------------------------------


def finite_number(value: Any, where: str) -> float:
    """`value` as a float, or a VisualPromptError naming `where` (bools, non-numbers, inf and nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise VisualPromptError(f"{where}: {value!r} is not a finite number")
    return float(value)


def refuse_pickle_path(path: Path, where: str) -> None:
    """A VisualPromptError naming `where` for a mask path that names a pickle."""
    if path.suffix.lower() in (".pkl", ".pickle"):
        raise VisualPromptError(f"{where}: {path}: {_PICKLE_ADVICE}")


def _ints(values: Sequence[Any]) -> list[int]:
    """The values that ``int()`` accepts, as ints (the official selection skips the others)."""
    return [int(v) for v in values if isinstance(v, (int, float)) or str(v).strip().lstrip("-").isdigit()]


