"""The learner's input: one `TrainSample` per completion, collated into a verl `DataProto`.

Layout (verl's): `input_ids` = left-padded prompt followed by the right-padded response, so every
row's prompt ends at the same column and `responses` is the last `R` columns. The prompt is the one
the rollout encoded (`policies.prompts.EncodedPrompt`): the learner trains on exactly those ids.
Vision inputs are kept PER SAMPLE in the non-tensor field `multi_modal_inputs` (a dict of
`pixel_values`, `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`),
as verl does: Qwen2.5-VL concatenates all patches of a batch into one `pixel_values` tensor, so a
batch-level tensor cannot follow `DataProto.split/select_idxs/chunk`; per-sample dicts can, and
`verl.utils.model.extract_multi_modal_inputs` concatenates them again for each micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from verl import DataProto

from spacevista.policies.prompts import EncodedPrompt, encode_prompts, pad_prompts

END_OF_TURN = "<|im_end|>"  # closes the assistant turn in the Qwen chat template (the policy's eos)


@dataclass(kw_only=True)
class TrainSample:
    """One completion of one prompt, as the learner needs it: the prompt the rollout encoded (or,
    for the SFT warm-up, its messages and frames, encoded by `collate`) and the sampled response."""

    response_ids: list[int]
    expert: str
    prompt: EncodedPrompt | None = None  # token ids + processed media, as the rollout engine encoded them
    messages: list[dict[str, Any]] = field(default_factory=list)  # else: chat messages with placeholders
    images: list[Image.Image] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)  # each video: its frames
    rollout_logprobs: list[float] | None = None  # sampled-token log-probs from the rollout engine
    advantage: float | list[float] = 0.0  # one per response token, or one for the whole response
    scale_label: str | None = None
    uid: str = ""  # prompt group id: the n samples of one request share it (and their prompt)
    record_id: str = "?"


def _object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _right_pad(rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(list(row), dtype=dtype)
    return out


def _prompts(processor, samples: Sequence[TrainSample]) -> list[EncodedPrompt]:
    """Each sample's encoded prompt; samples without one (SFT) are encoded here."""
    todo = [s for s in samples if s.prompt is None]
    encoded = iter(encode_prompts(processor, todo, [s.record_id for s in todo]) if todo else [])
    return [s.prompt if s.prompt is not None else next(encoded) for s in samples]


def collate(processor, samples: Sequence[TrainSample]) -> DataProto:
    """Encoded prompts (left-padded) + responses (right-padded) as a verl `DataProto`.

    Tensors: input_ids, attention_mask, mm_token_type_ids (Qwen-VL needs it for its 3D rope
    positions), responses, response_mask, advantages (per response token), rollout_log_probs (only
    when every sample carries them). Non-tensors: expert, uid, scale_label, record_id,
    multi_modal_inputs.
    """
    if not samples:
        raise ValueError("collate: no samples")
    for s in samples:
        if not s.response_ids:
            raise ValueError(f"record {s.record_id}: empty response")
        if s.rollout_logprobs is not None and len(s.rollout_logprobs) != len(s.response_ids):
            raise ValueError(f"record {s.record_id}: {len(s.rollout_logprobs)} rollout log-probs for "
                             f"{len(s.response_ids)} response tokens")
        if isinstance(s.advantage, (list, tuple)) and len(s.advantage) != len(s.response_ids):
            raise ValueError(f"record {s.record_id}: {len(s.advantage)} advantages for "
                             f"{len(s.response_ids)} response tokens")
    has_old = [s.rollout_logprobs is not None for s in samples]
    if any(has_old) and not all(has_old):
        raise ValueError("collate: rollout_logprobs must be given for all samples or none")

    prompts = _prompts(processor, samples)
    pad_id = processor.tokenizer.pad_token_id
    enc = pad_prompts(prompts, pad_id)
    width = max(len(s.response_ids) for s in samples)
    responses = _right_pad([s.response_ids for s in samples], width, pad_id, torch.long)
    response_mask = _right_pad([[1] * len(s.response_ids) for s in samples], width, 0, torch.long)
    tensors = {
        "input_ids": torch.cat([enc["input_ids"], responses], dim=1),
        "attention_mask": torch.cat([enc["attention_mask"], response_mask], dim=1),
        "responses": responses,
        "response_mask": response_mask,
        "advantages": _right_pad([s.advantage if isinstance(s.advantage, (list, tuple))
                                  else [s.advantage] * len(s.response_ids) for s in samples],
                                 width, 0.0, torch.float32),
    }
    if "mm_token_type_ids" in enc:
        tensors["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(responses)], dim=1)
    if all(has_old):
        tensors["rollout_log_probs"] = _right_pad([s.rollout_logprobs for s in samples], width, 0.0, torch.float32)
    non_tensors = {
        "expert": _object_array([s.expert for s in samples]),
        "uid": _object_array([s.uid for s in samples]),
        "scale_label": _object_array([s.scale_label for s in samples]),
        "record_id": _object_array([s.record_id for s in samples]),
        "multi_modal_inputs": _object_array([p.media for p in prompts]),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


def sft_collate(processor, samples: Sequence[TrainSample], targets: Sequence[str]) -> DataProto:
    """Collate (prompt, reference completion) pairs: the completion, closed by the end-of-turn
    token, becomes the response; `labels` is `input_ids` with -100 everywhere but the completion."""
    if len(samples) != len(targets):
        raise ValueError(f"sft_collate: {len(samples)} samples but {len(targets)} targets")
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids(END_OF_TURN)
    with_targets = [replace(s, response_ids=tok(t, add_special_tokens=False)["input_ids"] + [eos],
                            rollout_logprobs=None, advantage=0.0) for s, t in zip(samples, targets)]
    batch = collate(processor, with_targets)
    labels = batch.batch["input_ids"].clone()
    prompt_len = labels.shape[1] - batch.batch["responses"].shape[1]
    labels[:, :prompt_len] = -100
    labels[:, prompt_len:][batch.batch["response_mask"] == 0] = -100
    batch.batch["labels"] = labels
    return batch
