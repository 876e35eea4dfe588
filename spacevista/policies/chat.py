"""Record prompts -> the chat structure Hugging Face processors and vLLM expect.

Records store chat messages whose text holds `<image>` / `<video>` placeholders, one per media item,
in order. Processors want structured content parts instead. One converter, used by the rollout
engines and the learner alike, so both tokenize a prompt identically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

PLACEHOLDER = re.compile(r"<(image|video)>")


class PromptError(ValueError):
    """A prompt whose placeholders and media disagree; the message names the record."""


def to_chat_messages(prompt: Sequence[Mapping[str, Any]], n_images: int, n_videos: int,
                     record_id: str = "?") -> list[dict[str, Any]]:
    """Split each message's text at placeholders into content parts; check the media counts."""
    messages: list[dict[str, Any]] = []
    seen = {"image": 0, "video": 0}
    for i, msg in enumerate(prompt):
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise PromptError(f"record {record_id}: prompt[{i}] needs a role and string content, "
                              f"got {dict(msg)!r:.120}")
        parts: list[dict[str, Any]] = []
        pos = 0
        for m in PLACEHOLDER.finditer(content):
            if m.start() > pos:
                parts.append({"type": "text", "text": content[pos:m.start()]})
            parts.append({"type": m.group(1)})
            seen[m.group(1)] += 1
            pos = m.end()
        if pos < len(content):
            parts.append({"type": "text", "text": content[pos:]})
        messages.append({"role": role, "content": parts})
    if seen["image"] != n_images or seen["video"] != n_videos:
        raise PromptError(
            f"record {record_id}: prompt has {seen['image']} <image> and {seen['video']} <video> placeholders "
            f"but the record has {n_images} images and {n_videos} videos")
    return messages


MEDIA_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def media_token_ids(config: Any) -> list[int]:
    """Vision placeholder tokens of a Qwen-VL config. Rollout never samples them (a response holding
    one would no longer match its media when the learner re-encodes prompt + response), and the
    learner masks them the same way, so both compute log-probs under one distribution."""
    return sorted({int(getattr(config, k)) for k in MEDIA_TOKEN_KEYS if getattr(config, k, None) is not None})
