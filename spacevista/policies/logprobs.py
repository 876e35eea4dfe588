"""Token log-probs of the response tokens, each sample through its own scale expert.

A mixed batch runs as ONE forward with peft's `adapter_names=` (one expert name per row). peft
allows it only in eval mode, which is our mode for training too (LoRA dropout 0, Qwen has no
dropout); its gradients equal running each expert's sub-batch separately (tested). We use it
rather than one forward per expert because it keeps the number of forwards independent of the
expert mix, which FSDP needs: every rank must issue the same all-gathers. Speed on the tiny CPU
policy (benchmarks/bench_learner.py): equal at 8-16 samples, grouped 14-21% faster at 32 (peft
gathers/scatters each expert's rows in every LoRA layer); keep micro-batches moderate.

Logits are divided by the sampling temperature before the log-softmax, as the rollout engine did.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def forward_logprobs(model: torch.nn.Module, batch: DataProto, temperature: float = 1.0,
                     experts: Sequence[str] | None = None,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [B, R], entropy [B, R] or None) of `batch.responses` under `model`.

    `experts`: one adapter name per row (peft mixed batch), or None for the model as it is.
    """
    responses = batch.batch["responses"]
    device = _device(model)
    extra = {} if experts is None else {"adapter_names": list(experts)}
    # logits_to_keep = R + 1: the logits at the last prompt token and the response tokens only
    out = model(**model_inputs(batch, device), use_cache=False, logits_to_keep=responses.shape[1] + 1, **extra)
    logits = out.logits[:, :-1].float() / temperature
    logits[..., media_token_ids(model.config)] = MASKED_LOGIT  # never sampled by rollout (see media_token_ids)
    logprobs = logprobs_from_logits(logits, responses.to(device))
    return logprobs, (entropy_from_logits(logits) if with_entropy else None)


def policy_logprobs(model: PeftModel, batch: DataProto, temperature: float = 1.0,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs with each row through the expert named in `batch.non_tensor_batch['expert']`."""
    return forward_logprobs(model, batch, temperature, list(batch.non_tensor_batch["expert"]), with_entropy)


@torch.no_grad()
def reference_logprobs(model: PeftModel, batch: DataProto, temperature: float = 1.0,
                       micro_batch_size: int | None = None) -> torch.Tensor:
    """Log-probs under the base model (every expert disabled): the KL reference, no extra copy."""
    parts = batch.split(micro_batch_size) if micro_batch_size else [batch]
    with base_model_only(model):
        return torch.cat([forward_logprobs(model, part, temperature)[0] for part in parts])
