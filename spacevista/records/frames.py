"""Frames on demand: a Record holds frame structs (bytes or path); decode them to PIL RGB only when asked.

Relative frame paths resolve against a dataset root (``root``); absolute paths are used as they are.
Every failure raises ``FrameError`` naming the record id, which video (if any) and the frame index.
The record's visual prompts (``meta["visual_prompts"]``, see ``visual_prompts``) are drawn on the frames
of its first video, or of its images when it has no video.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from spacevista.records.schema import Frame, Record
from spacevista.records.visual_prompts import VisualPrompt, VisualPromptError, draw_visual_prompts


class FrameError(Exception):
    """A frame that cannot be loaded; names the record, the video (or image list) and the frame index."""


def decode_frame(frame: Frame, root: str | os.PathLike | None = None, *, where: str = "frame") -> Image.Image:
    """Decode one frame to an RGB image; ``where`` prefixes error messages (e.g. "record 'x', video 0, frame 3")."""
    if frame.bytes:
        source: io.BytesIO | Path = io.BytesIO(frame.bytes)
        what = f"{len(frame.bytes)} inline bytes"
    elif frame.path:
        source = resolve_path(frame.path, root)
        if not source.is_file():
            raise FrameError(f"{where}: file not found: {source}")
        what = str(source)
    else:
        raise FrameError(f"{where}: neither bytes nor path set")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise FrameError(f"{where}: cannot decode {what} ({err})") from None


def resolve_path(path: str, root: str | os.PathLike | None) -> Path:
    """``path`` itself if absolute or no root is given, else ``root / path``."""
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p


def load_video(record: Record, video: int = 0, root: str | os.PathLike | None = None) -> list[Image.Image]:
    """All frames of ``record.videos[video]`` as RGB images (video 0 with the visual prompts drawn)."""
    if not 0 <= video < len(record.videos):
        raise FrameError(f"record {record.id!r}: no video {video} (it has {len(record.videos)})")
    frames = [decode_frame(frame, root, where=f"record {record.id!r}, video {video}, frame {i}")
              for i, frame in enumerate(record.videos[video])]
    return _with_visual_prompts(record, frames, root, f"record {record.id!r}, video {video}") if video == 0 else frames


def load_images(record: Record, root: str | os.PathLike | None = None) -> list[Image.Image]:
    """All of ``record.images`` as RGB images (with the visual prompts drawn if the record has no video)."""
    images = [decode_frame(frame, root, where=f"record {record.id!r}, image {i}")
              for i, frame in enumerate(record.images)]
    return images if record.videos else _with_visual_prompts(record, images, root, f"record {record.id!r}, images")


def _with_visual_prompts(record: Record, frames: list[Image.Image], root: str | os.PathLike | None,
                         where: str) -> list[Image.Image]:
    """``frames`` with ``record.meta["visual_prompts"]`` drawn (mask paths resolve against ``root``)."""
    stored = record.meta.get("visual_prompts")
    if not stored:
        return frames
    try:
        return draw_visual_prompts(frames, [VisualPrompt.from_dict(p) for p in stored], mask_root=root)
    except VisualPromptError as err:
        raise FrameError(f"{where}: visual prompts: {err}") from None


def encode_frame(image: Image.Image, format: str = "PNG") -> Frame:
    """An inline frame holding ``image`` encoded as PNG (lossless, deterministic) or JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"compress_level": 1} if format == "PNG" else {"quality": 90}))
    return Frame(bytes=buffer.getvalue())
