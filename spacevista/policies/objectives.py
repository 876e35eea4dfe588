"""RL objectives: advantages and the policy loss, by name, from verl's `core_algos`.

Nothing here re-implements an algorithm: `ObjectiveConfig` names verl's registered advantage
estimator and policy loss and carries their hyper-parameters; these functions build the verl
config objects those functions expect and call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig, PolicyLossConfig

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# estimators that need inputs an outcome-reward batch does not have (a critic, baseline rollouts, ...)
UNSUPPORTED_ESTIMATORS = ("gae", "remax", "gdpo", "optimal_token_baseline", "tir_optimal_token_baseline")


@dataclass
class ObjectiveConfig:
    adv_estimator: str = "grpo"  # any verl estimator over outcome rewards: grpo, rloo, reinforce_plus_plus, ...
    policy_loss: str = "vanilla"  # verl policy-loss name: vanilla (PPO/GRPO clip), gspo, cispo, sapo, ...
    clip_ratio: float = 0.2
    clip_ratio_low: float | None = None  # None: clip_ratio
    clip_ratio_high: float | None = None  # DAPO clip-higher: clip_ratio_high > clip_ratio_low
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages
    loss_agg_mode: str = "token-mean"
    kl_coef: float = 0.001  # weight of the KL-to-reference loss; 0 skips the reference forward
    kl_penalty: str = "low_var_kl"
    norm_adv_by_std_in_grpo: bool = True  # False: Dr.GRPO
    entropy_coeff: float = 0.0
    gamma: float = 1.0  # reinforce_plus_plus discount

    def __post_init__(self) -> None:
        if self.adv_estimator in UNSUPPORTED_ESTIMATORS or self.adv_estimator not in core_algos.ADV_ESTIMATOR_REGISTRY:
            supported = sorted(set(core_algos.ADV_ESTIMATOR_REGISTRY) - set(UNSUPPORTED_ESTIMATORS))
            raise ValueError(f"objective.adv_estimator={self.adv_estimator!r} is not supported; "
                             f"choose from {supported}")
        if self.policy_loss not in core_algos.POLICY_LOSS_REGISTRY:
            raise ValueError(f"objective.policy_loss={self.policy_loss!r} unknown; choose from "
                             f"{sorted(core_algos.POLICY_LOSS_REGISTRY)}")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"objective.loss_agg_mode={self.loss_agg_mode!r} unknown; choose from {LOSS_AGG_MODES}")

    def actor_config(self, global_batch_info: dict[str, Any] | None = None) -> ActorConfig:
        """verl's `ActorConfig` carrying these settings (what verl's policy-loss functions read)."""
        low = self.clip_ratio if self.clip_ratio_low is None else self.clip_ratio_low
        high = self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high
        return ActorConfig(
            strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
            clip_ratio=self.clip_ratio, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=self.clip_ratio_c,
            loss_agg_mode=self.loss_agg_mode, policy_loss=PolicyLossConfig(loss_mode=self.policy_loss),
            entropy_coeff=self.entropy_coeff, use_kl_loss=self.kl_coef > 0, kl_loss_coef=self.kl_coef,
            kl_loss_type=self.kl_penalty, global_batch_info=dict(global_batch_info or {}),
        )

    def algo_config(self) -> AlgoConfig:
        return AlgoConfig(adv_estimator=self.adv_estimator, gamma=self.gamma,
                          norm_adv_by_std_in_grpo=self.norm_adv_by_std_in_grpo)


def outcome_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] rewards: each sequence's score on its last response token (verl's convention)."""
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32)
    last = response_mask.long().sum(-1).clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] = scores.float()
    return rewards


def compute_advantages(scores: torch.Tensor, response_mask: torch.Tensor, uids: Sequence[str],
                       cfg: ObjectiveConfig) -> torch.Tensor:
    """Token-level advantages [B, T] from one score per sequence, grouped by prompt uid."""
    fn = core_algos.get_adv_estimator_fn(cfg.adv_estimator)
    kwargs: dict[str, Any] = dict(token_level_rewards=outcome_token_rewards(scores, response_mask),
                                  response_mask=response_mask.float(), index=np.asarray(list(uids), dtype=object),
                                  config=cfg.algo_config())
    if cfg.adv_estimator == "grpo":  # verl's trainer passes this one explicitly too
        kwargs["norm_adv_by_std_in_grpo"] = cfg.norm_adv_by_std_in_grpo
    advantages, _returns = fn(**kwargs)
    return advantages


def response_advantages(scores: torch.Tensor, lengths: Sequence[int], uids: Sequence[str],
                        cfg: ObjectiveConfig) -> list[list[float]]:
    """Per response token, the advantages of sequences of the given lengths (the real response
    mask: discounting and token-level normalisation, e.g. reinforce_plus_plus, see every token)."""
    mask = torch.zeros(len(lengths), max(lengths, default=1))
    for i, length in enumerate(lengths):
        mask[i, :length] = 1.0
    advantages = compute_advantages(scores, mask, uids, cfg)
    return [advantages[i, :length].tolist() for i, length in enumerate(lengths)]


def policy_objective(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                     advantages: torch.Tensor, response_mask: torch.Tensor, cfg: ObjectiveConfig,
                     entropy: torch.Tensor | None = None, global_batch_info: dict[str, Any] | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """verl policy loss (+ KL to the reference, - entropy bonus) as verl's actor assembles it.

    `global_batch_info` ({dp_size, batch_num_tokens, global_batch_size}) makes the loss of a
    micro-batch its share of the global-batch mean, so summing micro-batch gradients and averaging
    over data-parallel ranks gives the gradient of the full batch (verl's `agg_loss` contract).
    """
    actor_cfg = cfg.actor_config(global_batch_info)
    mask = response_mask.bool()
    pg_loss, pg_metrics = core_algos.get_policy_loss_fn(cfg.policy_loss)(
        old_log_prob=old_logprobs, log_prob=logprobs, advantages=advantages, response_mask=mask,
        loss_agg_mode=cfg.loss_agg_mode, config=actor_cfg, rollout_is_weights=None)
    metrics = {k.removeprefix("actor/"): float(v) for k, v in pg_metrics.items()}
    metrics["pg_loss"] = pg_loss.item()
    loss = pg_loss
    agg = dict(loss_mask=mask, loss_agg_mode=cfg.loss_agg_mode, **actor_cfg.global_batch_info)
    if entropy is not None:
        entropy_loss = core_algos.agg_loss(loss_mat=entropy, **agg)
        loss = loss - cfg.entropy_coeff * entropy_loss
        metrics["entropy"] = entropy_loss.item()
    if ref_logprobs is not None:
        kld = core_algos.kl_penalty(logprob=logprobs, ref_logprob=ref_logprobs, kl_penalty=cfg.kl_penalty)
        kl_loss = core_algos.agg_loss(loss_mat=kld, **agg)
        loss = loss + cfg.kl_coef * kl_loss
        metrics["kl"] = kl_loss.item()
    return loss, metrics
