"""Token log-probs of the response tokens, each sample through its own scale expert.

A mixed batch runs as ONE forward with peft's `adapter_names=` (one expert name per row). peft
allows it only in eval mode, which is our mode for training too (LoRA dropout 0, Qwen has no
dropout); its gradients equal running each expert's sub-batch separately (tested). We use it
rather than one forward per expert because it keeps the number of forwards independent of the
expert mix, which FSDP needs: every rank must issue the same all-gathers. Speed on the tiny CPU
policy (benchmarks/bench_learner.py): equal at 8-16 samples, grouped 14-21% faster at 32 (peft
gathers/scatters each expert's rows in every LoRA layer); keep micro-batches moderate.

Logits are divided by the sampling temperature before the log-softmax, as the rollout engine did.

Shared prompts (`share_prompts=True`): GRPO draws n responses per prompt, and a SpaceVista prompt
(video tokens + question) is most of each sequence. Each distinct prompt then runs once through its
expert (a cache-building forward), its keys/values are repeated for its n samples, and a second
forward over the responses alone attends to them: the same log-probs and gradients (tested), about
half the FLOPs on the embedded default. The two forwards happen whatever the batch holds, so every
FSDP rank issues the same collectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from verl import DataProto
from verl.utils.model import extract_multi_modal_inputs
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

from spacevista.policies.chat import media_token_ids
from spacevista.policies.experts import base_model_only

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def model_inputs(batch: DataProto, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The forward kwargs of a collated batch: token tensors + its samples' vision tensors."""
    inputs = {k: batch.batch[k] for k in MODEL_INPUT_KEYS if k in batch.batch.keys()}
    if "multi_modal_inputs" in batch.non_tensor_batch:
        inputs.update(extract_multi_modal_inputs(list(batch.non_tensor_batch["multi_modal_inputs"])))
    return {k: v.to(device) for k, v in inputs.items()}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


MASKED_LOGIT = -1e9  # finite, so entropy stays defined (0 * -inf would be nan)


@dataclass(frozen=True)
class PromptGroups:
    """Rows that share one prompt: `firsts[k]` is the first row of prompt k, `inverse[i]` row i's k."""

    firsts: list[int]
    inverse: torch.Tensor


def prompt_groups(batch: DataProto, experts: Sequence[str] | None = None) -> PromptGroups:
    """Group rows that share one prompt and run through the same expert: GRPO's n samples of one
    request, by their `uid` (the rollout encoded that request's prompt once for all of them). A batch
    without uids (hand-built ones) is grouped by content: identical tokens, padding and media."""
    names = list(experts) if experts is not None else [None] * len(batch)
    uids = batch.non_tensor_batch.get("uid")
    if uids is not None and all(isinstance(u, str) and u for u in uids):
        keys: dict[tuple, int] = {}
        inverse = [keys.setdefault((name, uid), len(keys)) for name, uid in zip(names, uids)]
        firsts = [inverse.index(k) for k in range(len(keys))]
        _check_shared(batch, firsts, inverse, list(uids))
        return PromptGroups(firsts, torch.tensor(inverse, dtype=torch.long))
    prompt_len = _prompt_len(batch)
    prompts = torch.cat([batch.batch["input_ids"][:, :prompt_len], batch.batch["attention_mask"][:, :prompt_len]], 1)
    media = batch.non_tensor_batch.get("multi_modal_inputs")
    candidates: dict[tuple, list[int]] = {}  # (expert, prompt tokens) -> groups with those tokens
    firsts: list[int] = []
    inverse: list[int] = []
    for i, expert in enumerate(names):
        same_tokens = candidates.setdefault((expert, prompts[i].cpu().numpy().tobytes()), [])
        k = next((k for k in same_tokens if media is None or _same_media(media[i], media[firsts[k]])), None)
        if k is None:
            k = len(firsts)
            firsts.append(i)
            same_tokens.append(k)
        inverse.append(k)
    return PromptGroups(firsts, torch.tensor(inverse, dtype=torch.long))


def _prompt_len(batch: DataProto) -> int:
    return batch.batch["input_ids"].shape[1] - batch.batch["responses"].shape[1]


def _check_shared(batch: DataProto, firsts: list[int], inverse: list[int], uids: list[str]) -> None:
    """Rows grouped by uid must hold the same prompt tokens (a cheap check of the contract)."""
    prompts = batch.batch["input_ids"][:, :_prompt_len(batch)]
    leaders = prompts[[firsts[k] for k in inverse]]
    differ = (prompts != leaders).any(1).nonzero()
    if len(differ):
        row = int(differ[0])
        raise ValueError(f"rows {firsts[inverse[row]]} and {row} share uid {uids[row]!r} but not their prompt tokens")


def _same_media(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ROPE_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")  # what Qwen-VL's 3D positions read


def _shared_prompt_logits(model: torch.nn.Module, batch: DataProto, device: torch.device,
                          experts: Sequence[str] | None) -> torch.Tensor:
    """Logits predicting each response token [B, R, V], each distinct prompt computed once."""
    groups = prompt_groups(batch, experts)
    firsts, inverse = groups.firsts, groups.inverse.to(device)
    tokens = {k: batch.batch[k].to(device) for k in MODEL_INPUT_KEYS if k in batch.batch.keys()}
    media = list(batch.non_tensor_batch["multi_modal_inputs"]) if "multi_modal_inputs" in batch.non_tensor_batch else []
    grids = {k: v.to(device) for k, v in
             extract_multi_modal_inputs([{k: v for k, v in m.items() if k in ROPE_KEYS} for m in media]).items()}
    prompt_len = tokens["input_ids"].shape[1] - batch.batch["responses"].shape[1]
    hf = model.get_base_model() if isinstance(model, PeftModel) else model
    # Qwen-VL's 3D rope positions of the full sequences, as a single forward computes them
    positions, _ = hf.model.get_rope_index(tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                           mm_token_type_ids=tokens.get("mm_token_type_ids"), **grids)

    prompt_inputs = {k: v[firsts, :prompt_len] for k, v in tokens.items()}
    prompt_inputs.update({k: v.to(device) for k, v in extract_multi_modal_inputs([media[i] for i in firsts]).items()}
                         if media else {})
    names = {} if experts is None else {"adapter_names": [experts[i] for i in firsts]}
    prompt_out = model(**prompt_inputs, position_ids=positions[:, firsts, :prompt_len], use_cache=True,
                       logits_to_keep=1, **names)
    cache = prompt_out.past_key_values
    cache.reorder_cache(inverse)  # each sample gets its prompt's keys/values (index_select: differentiable)
    names = {} if experts is None else {"adapter_names": list(experts)}
    response_out = model(input_ids=tokens["input_ids"][:, prompt_len:], attention_mask=tokens["attention_mask"],
                         position_ids=positions[:, :, prompt_len:], past_key_values=cache, use_cache=True, **names)
    return torch.cat([prompt_out.logits[:, -1:][inverse], response_out.logits[:, :-1]], dim=1)


def forward_logprobs(model: torch.nn.Module, batch: DataProto, temperature: float = 1.0,
                     experts: Sequence[str] | None = None, with_entropy: bool = False,
                     share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [B, R], entropy [B, R] or None) of `batch.responses` under `model`.

    `experts`: one adapter name per row (peft mixed batch), or None for the model as it is.
    `share_prompts`: compute each distinct prompt once (see the module doc); same result.
    """
    responses = batch.batch["responses"]
    device = _device(model)
    if share_prompts:
        logits = _shared_prompt_logits(model, batch, device, experts)
    else:
        extra = {} if experts is None else {"adapter_names": list(experts)}
        # logits_to_keep = R + 1: the logits at the last prompt token and the response tokens only
        logits = model(**model_inputs(batch, device), use_cache=False, logits_to_keep=responses.shape[1] + 1,
                       **extra).logits[:, :-1]
    logits = logits.float() / temperature
    logits[..., media_token_ids(model.config)] = MASKED_LOGIT  # never sampled by rollout (see media_token_ids)
    logprobs = logprobs_from_logits(logits, responses.to(device))
    return logprobs, (entropy_from_logits(logits) if with_entropy else None)


def policy_logprobs(model: PeftModel, batch: DataProto, temperature: float = 1.0, with_entropy: bool = False,
                    share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs with each row through the expert named in `batch.non_tensor_batch['expert']`."""
    return forward_logprobs(model, batch, temperature, list(batch.non_tensor_batch["expert"]), with_entropy,
                            share_prompts)


@torch.no_grad()
def reference_logprobs(model: PeftModel, batch: DataProto, temperature: float = 1.0,
                       micro_batch_size: int | None = None, share_prompts: bool = False) -> torch.Tensor:
    """Log-probs under the base model (every expert disabled): the KL reference, no extra copy."""
    parts = batch.split(micro_batch_size) if micro_batch_size else [batch]
    with base_model_only(model):
        return torch.cat([forward_logprobs(model, part, temperature, share_prompts=share_prompts)[0]
                          for part in parts])
