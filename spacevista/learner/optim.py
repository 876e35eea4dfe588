"""AdamW with one parameter group per expert (+ router, + base for full SFT), stepped by presence.

An expert absent from the GLOBAL batch of a step must not move: AdamW would still apply momentum
and weight decay to it. Its group's gradients are set to None before `step`, which torch's AdamW
skips entirely (no moment update, no decay, no step count).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from spacevista.configs.policy import OptimConfig

__all__ = ["OptimConfig", "ParamGroup", "build_optimizer", "build_scheduler", "step_present"]


@dataclass
class ParamGroup:
    name: str  # "expert/<name>", "router" or "base"
    params: list[nn.Parameter]
    lr: float | None = None  # None: OptimConfig.lr
    weight_decay: float | None = None


def build_optimizer(groups: Sequence[ParamGroup], cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [{"params": g.params, "name": g.name,
          "lr": cfg.lr if g.lr is None else g.lr,
          "weight_decay": cfg.weight_decay if g.weight_decay is None else g.weight_decay} for g in groups],
        lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.schedule == "cosine":
        if cfg.total_steps < 1:
            raise ValueError("optim.total_steps: a cosine schedule needs its horizon (>= 1 step)")
        return get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.total_steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)


def _clip(params: list[torch.Tensor], max_norm: float) -> float:
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def step_present(optimizer: torch.optim.Optimizer, present: Iterable[str], grad_clip: float,
                 separate_clip: Sequence[str] = ("router", "dense"), finite_loss: bool = True) -> Mapping[str, float]:
    """Drop the gradients of absent groups, clip, step, zero grads. Returns grad norms and `nonfinite`.

    Groups named in `separate_clip` (the router, the dense fusion: plain tensors, while FSDP parameters
    are DTensors) are clipped each on its own; the rest are clipped together by global norm. A step whose
    loss (`finite_loss` False) or any gradient norm is not finite is skipped (gradients dropped, no parameter
    or optimizer state moves) and reported as `nonfinite` 1.0. The norms are global, so every rank agrees.
    """
    present = set(present)
    policy, apart = [], defaultdict(list)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if group["name"] not in present:
                p.grad = None
            elif p.grad is not None:
                (apart[group["name"]] if group["name"] in separate_clip else policy).append(p)
    norms = {"grad_norm": _clip(policy, grad_clip)}
    for name, params in apart.items():
        norms[f"{name}/grad_norm"] = _clip(params, grad_clip)
    finite = finite_loss and all(math.isfinite(v) for v in norms.values())
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**norms, "nonfinite": 0.0 if finite else 1.0}
