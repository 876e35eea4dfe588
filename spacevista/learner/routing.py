"""The scale router on a training batch: its prompt features from verl's `DataProto` (the model-level
pooling is `policies.router`) and its cross-entropy step across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from verl import DataProto

from spacevista.learner.logprobs import model_inputs, prompt_groups
from spacevista.policies.router import ScaleRouter, pool_prompt_features, prompt_features


@torch.no_grad()
def batch_prompt_features(model: nn.Module, batch: DataProto) -> torch.Tensor:
    """Pooled prompt features [B, 2H] of a collated batch (its prompt part only)."""
    device = next(model.parameters()).device
    inputs = model_inputs(batch, device)
    prompt_len = inputs["input_ids"].shape[1] - batch.batch["responses"].shape[1]
    return prompt_features(model, inputs, prompt_len)


def sample_prompt_features(mb: DataProto, embeds: torch.Tensor, vision_ids: Sequence[int]) -> torch.Tensor:
    """Router features [B, 2H] of the prompt embeddings captured during a micro-batch's forward: one row per
    sample, or per distinct prompt when prompts were shared (then repeated for their samples)."""
    prompt_len = mb.batch["input_ids"].shape[1] - mb.batch["responses"].shape[1]
    rows = slice(None)
    inverse = None
    if embeds.shape[0] != len(mb):
        groups = prompt_groups(mb, list(mb.non_tensor_batch["expert"]))
        rows, inverse = groups.firsts, groups.inverse.to(embeds.device)
    pooled = pool_prompt_features(embeds, mb.batch["input_ids"][rows], mb.batch["attention_mask"][rows],
                                  vision_ids, prompt_len)
    return pooled if inverse is None else pooled[inverse]


def router_backward(router: ScaleRouter, features: torch.Tensor, labels: list, n_labelled: int,
                    world: int) -> dict[str, float]:
    """Router CE (its share of the global mean) backward + gradient all-reduce; local accuracy."""
    report = router.accuracy(features, labels)
    loss, _ = router.loss(features, labels, normalizer=n_labelled)
    loss.backward()
    if world > 1:
        for p in router.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
    router.trained_steps += 1
    return {"router/loss": loss.item(), **report}
