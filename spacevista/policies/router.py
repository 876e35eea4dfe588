"""Scale router: which expert serves a prompt.

`label` mode uses the record's scale (the anchor during training); `learned` mode asks a small
classifier over pooled prompt features, for prompts whose scale is unknown (evaluation). The
classifier is trained with cross-entropy against the scale labels inside the learner step.

Prompt features = [mean of the prompt's text token embeddings, mean of its vision-encoder outputs],
read at the INPUT of the language model (a forward pre-hook): there Qwen-VL has just scattered the
vision tower's outputs into the token embeddings. Both come from the frozen base modules; LoRA sits
on the language model's linear layers only, so the features do not depend on which expert (if any)
is active, and they can be captured during any forward the learner runs anyway, under FSDP too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from spacevista.configs.policy import RouterConfig
from spacevista.scales import canonical_scale


def _language_model(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.language_model


class FeatureCapture:
    """Holds the language model's input embeddings of the last prompt forward while active (a
    forward that continues from a key/value cache sees responses only, not the prompt)."""

    def __init__(self) -> None:
        self.embeds: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            self.embeds = kwargs["inputs_embeds"].detach()


@contextmanager
def capture_prompt_features(model: nn.Module) -> Iterator[FeatureCapture]:
    """Record the language model's input embeddings during the forwards inside the block."""
    capture = FeatureCapture()
    handle = _language_model(model).register_forward_pre_hook(capture.hook, with_kwargs=True)
    try:
        yield capture
    finally:
        handle.remove()


def pool_prompt_features(embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         vision_token_ids: Sequence[int], prompt_len: int | None = None) -> torch.Tensor:
    """[B, 2H]: masked mean of the prompt's text embeddings, then of its vision embeddings (0 if none)."""
    prompt_len = input_ids.shape[1] if prompt_len is None else prompt_len
    embeds = embeds[:, :prompt_len].float()
    ids, valid = input_ids[:, :prompt_len].to(embeds.device), attention_mask[:, :prompt_len].to(embeds.device).bool()
    vision = torch.isin(ids, torch.tensor(list(vision_token_ids), device=ids.device)) & valid
    text = valid & ~vision

    def masked_mean(mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(embeds.dtype)
        return (embeds * m).sum(1) / m.sum(1).clamp(min=1.0)

    return torch.cat([masked_mean(text), masked_mean(vision)], dim=-1)


def vision_token_ids(model: nn.Module) -> tuple[int, int]:
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    return config.image_token_id, config.video_token_id


def feature_dim(model: nn.Module) -> int:
    return 2 * _language_model(model).config.hidden_size


@torch.no_grad()
def prompt_features(model: nn.Module, encoded: Mapping[str, torch.Tensor], prompt_len: int | None = None
                    ) -> torch.Tensor:
    """Pooled prompt features [B, 2H] of processor output (or a batch's model inputs whose first
    `prompt_len` positions are the prompt; a training batch: `learner.routing.batch_prompt_features`)."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in encoded.items() if torch.is_tensor(v)}
    with capture_prompt_features(model) as capture:
        model(**inputs, use_cache=False, logits_to_keep=1)
    return pool_prompt_features(capture.embeds, inputs["input_ids"], inputs["attention_mask"],
                                vision_token_ids(model), prompt_len)


class ScaleRouter(nn.Module):
    """Maps prompts to expert names (configs.experts: one per scale by default, or any layout)."""

    def __init__(self, experts: Sequence[str], feature_dim: int, cfg: RouterConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RouterConfig()
        self.experts = list(experts)
        self.classifier = nn.Sequential(
            nn.LayerNorm(feature_dim), nn.Linear(feature_dim, self.cfg.hidden), nn.GELU(),
            nn.Linear(self.cfg.hidden, len(self.experts)),
        ) if self.cfg.learn else None
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    @property
    def has_classifier(self) -> bool:
        """A learned router is available: a classifier that has taken at least one step."""
        return self.classifier is not None and int(self.trained_steps) > 0

    def label_index(self, scale_labels: Sequence[str | None]) -> torch.Tensor:
        """Class index per label (an expert's name, or any spelling of a scale that names one); -1 where the
        label is missing or names no expert. The controller labels each sample with its routed expert."""
        index = {e: i for i, e in enumerate(self.experts)}
        return torch.tensor([index[lab] if lab in index else index.get(canonical_scale(lab) or "", -1)
                             for lab in scale_labels], dtype=torch.long)

    def predict(self, features: torch.Tensor) -> list[str]:
        if self.classifier is None:
            raise RuntimeError("router has no classifier (router.learn=False)")
        with torch.no_grad():
            return [self.experts[i] for i in self.classifier(features.float()).argmax(-1).tolist()]

    def loss(self, features: torch.Tensor, scale_labels: Sequence[str | None], normalizer: float | None = None
             ) -> tuple[torch.Tensor, int]:
        """(sum of CE over labelled samples / normalizer, number labelled); normalizer defaults to that count."""
        target = self.label_index(scale_labels).to(features.device)
        labelled = target >= 0
        n = int(labelled.sum())
        logits = self.classifier(features.float())
        ce = nn.functional.cross_entropy(logits[labelled], target[labelled], reduction="sum")
        return ce / max(normalizer if normalizer is not None else n, 1), n

    def accuracy(self, features: torch.Tensor, scale_labels: Sequence[str | None]) -> dict[str, float]:
        """Per-scale and overall accuracy of the classifier on labelled samples."""
        target = self.label_index(scale_labels)
        predicted = torch.tensor([self.experts.index(e) for e in self.predict(features)])
        report: dict[str, float] = {}
        for i, expert in enumerate(self.experts):
            mask = target == i
            if mask.any():
                report[f"router/acc/{expert}"] = (predicted[mask] == i).float().mean().item()
        labelled = target >= 0
        if labelled.any():
            report["router/acc"] = (predicted[labelled] == target[labelled]).float().mean().item()
        return report
