"""Prompt encoding, in one place: chat messages + frames -> the token ids and processed media the
policy sees. The rollout engines encode each prompt once; the learner trains on exactly those ids
and tensors (no second chat template, tokenizer or image processor pass), and the shared-prompt
forward groups a GRPO group's samples by the prompt they share.

An `EncodedPrompt` is one prompt, unpadded: its token ids (and Qwen-VL's `mm_token_type_ids`) and
its own vision tensors (`pixel_values` + `image_grid_thw`, `pixel_values_videos` + `video_grid_thw`
+ `second_per_grid_ts`). Qwen2.5-VL concatenates the patches of a whole batch into one tensor, so
per-prompt tensors are what can be split, shared and re-batched (verl keeps them per sample too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from spacevista.policies.chat import to_chat_messages


class PromptSource(Protocol):
    """What can be encoded: a generation request or a training sample."""

    messages: list[dict[str, Any]]
    images: list[Image.Image]
    videos: list[list[Image.Image]]


@dataclass
class EncodedPrompt:
    """One prompt as token ids and processed media, without padding."""

    input_ids: list[int]
    mm_token_type_ids: list[int] | None = None
    media: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def chat_text(processor: Any, source: PromptSource, source_id: str = "?") -> str:
    """The prompt through the model's chat template, ending with the assistant turn's opening."""
    messages = to_chat_messages(source.messages, len(source.images), len(source.videos), source_id)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_batch(processor: Any, sources: Sequence[PromptSource],
                 ids: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], list[EncodedPrompt]]:
    """(the processor's left-padded batch, ready for `generate`, and each prompt's EncodedPrompt)."""
    ids = ids or [getattr(s, "request_id", None) or getattr(s, "record_id", "?") for s in sources]
    texts = [chat_text(processor, s, i) for s, i in zip(sources, ids)]
    images = [im for s in sources for im in s.images] or None
    videos = [v for s in sources for v in s.videos] or None
    enc = processor(text=texts, images=images, videos=videos, padding=True, padding_side="left", return_tensors="pt")
    media = _media_per_prompt(enc, sources)
    prompts = []
    for i, m in enumerate(media):
        keep = enc["attention_mask"][i].bool()
        types = enc.get("mm_token_type_ids")
        prompts.append(EncodedPrompt(enc["input_ids"][i][keep].tolist(),
                                     None if types is None else types[i][keep].tolist(), m))
    return dict(enc), prompts


def encode_prompts(processor: Any, sources: Sequence[PromptSource],
                   ids: Sequence[str] | None = None) -> list[EncodedPrompt]:
    return encode_batch(processor, sources, ids)[1]


def pad_prompts(prompts: Sequence[EncodedPrompt], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids`, `attention_mask` (and `mm_token_type_ids`) of a batch of prompts:
    exactly what the processor's own left padding gives for the same prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    has_types = [p.mm_token_type_ids is not None for p in prompts]
    types = torch.zeros((len(prompts), width), dtype=torch.long) if all(has_types) else None
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(p.input_ids, dtype=torch.long)
        mask[i, width - len(p):] = 1
        if types is not None:
            types[i, width - len(p):] = torch.as_tensor(p.mm_token_type_ids, dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        out["mm_token_type_ids"] = types
    return out


def _split_rows(tensor: torch.Tensor | None, grid_thw: torch.Tensor | None, counts: list[int]) -> list[tuple]:
    """Per prompt: (its rows of the concatenated patch tensor, its grid_thw rows)."""
    if tensor is None or grid_thw is None:
        return [(None, None)] * len(counts)
    patches = torch.split(tensor, grid_thw.prod(-1).tolist())
    out, i = [], 0
    for n in counts:
        out.append((torch.cat(patches[i:i + n]) if n else None, grid_thw[i:i + n] if n else None))
        i += n
    return out


def _media_per_prompt(enc: Any, sources: Sequence[PromptSource]) -> list[dict[str, torch.Tensor]]:
    images = _split_rows(enc.get("pixel_values"), enc.get("image_grid_thw"), [len(s.images) for s in sources])
    n_videos = [len(s.videos) for s in sources]
    videos = _split_rows(enc.get("pixel_values_videos"), enc.get("video_grid_thw"), n_videos)
    seconds = enc.get("second_per_grid_ts")
    seconds = torch.as_tensor(seconds, dtype=torch.float32) if seconds is not None else None
    out, v = [], 0
    for (pix, img_thw), (vid, vid_thw), n in zip(images, videos, n_videos):
        inputs: dict[str, torch.Tensor] = {}
        if pix is not None:
            inputs.update(pixel_values=pix, image_grid_thw=img_thw)
        if vid is not None:
            inputs.update(pixel_values_videos=vid, video_grid_thw=vid_thw)
            if seconds is not None:
                inputs["second_per_grid_ts"] = seconds[v:v + n]
        v += n
        out.append(inputs)
    return out
