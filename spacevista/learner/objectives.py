"""RL objectives: advantages and the policy loss, by name, from verl's `core_algos`.

Nothing here re-implements an algorithm: `ObjectiveConfig` (configs/policy.py, the one home of its
defaults) names verl's registered advantage estimator and policy loss and carries their
hyper-parameters; these functions build the verl config objects those functions expect and call them.
verl is imported on call (it imports Ray), so importing this module stays Ray-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from spacevista.configs.policy import UNSUPPORTED_ESTIMATORS, ObjectiveConfig

__all__ = ["ObjectiveConfig", "behaviour_correction", "compute_advantages", "objective_problems", "policy_objective",
           "response_advantages"]


def objective_problems(cfg: ObjectiveConfig, key: str = "objective") -> list[str]:
    """What verl cannot run in `cfg`, each naming its key (`key`.adv_estimator, `key`.policy_loss)."""
    from verl.trainer.ppo import core_algos

    problems = []
    estimators = sorted(set(core_algos.ADV_ESTIMATOR_REGISTRY) - set(UNSUPPORTED_ESTIMATORS))
    if cfg.adv_estimator not in estimators:
        problems.append(f"{key}.adv_estimator={cfg.adv_estimator!r} is not supported: choose from {estimators}")
    if cfg.policy_loss not in core_algos.POLICY_LOSS_REGISTRY:
        problems.append(f"{key}.policy_loss={cfg.policy_loss!r} unknown: choose from "
                        f"{sorted(core_algos.POLICY_LOSS_REGISTRY)}")
    return problems


def outcome_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] rewards: each sequence's score on its last response token (verl's convention)."""
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32)
    last = response_mask.long().sum(-1).clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] = scores.float()
    return rewards


def compute_advantages(scores: torch.Tensor, response_mask: torch.Tensor, uids: Sequence[str],
                       cfg: ObjectiveConfig) -> torch.Tensor:
    """Token-level advantages [B, T] from one score per sequence, grouped by prompt uid."""
    from verl.trainer.ppo import core_algos

    fn = core_algos.get_adv_estimator_fn(cfg.adv_estimator)
    kwargs: dict[str, Any] = dict(token_level_rewards=outcome_token_rewards(scores, response_mask),
                                  response_mask=response_mask.float(), index=np.asarray(list(uids), dtype=object),
                                  config=verl_algo_config(cfg))
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


def behaviour_correction(logprobs: torch.Tensor, rollout_logprobs: torch.Tensor | None, response_mask: torch.Tensor,
                         cfg: ObjectiveConfig) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """(old log-probs, importance weights or None, mismatch metrics) of one micro-batch.

    The old log-probs are the learner's own (`logprobs` detached): one update per batch and no dropout make
    them what verl's separate recompute forward gives, without a second forward. `rollout_logprobs` (what the
    sampler reported) are compared with them on every response token: mean and max absolute gap, and verl's
    KL(rollout || learner) estimators. With `cfg.behaviour_logprobs == "rollout"` they also weight the loss by
    verl's truncated importance ratio min(pi_learner / pi_rollout, rollout_is_threshold) per token, which corrects
    a rollout/learner numeric mismatch (bf16, another kernel) and an async rollout's staleness."""
    from verl.trainer.ppo import rollout_corr_helper as corr

    old = logprobs.detach()
    if rollout_logprobs is None:
        return old, None, {}
    mask = response_mask.bool()
    gap = (old - rollout_logprobs).abs()[mask]
    off = corr.compute_offpolicy_metrics(old_log_prob=old, rollout_log_prob=rollout_logprobs, response_mask=mask)
    metrics = {"mismatch/logprob_gap_mean": gap.mean().item() if gap.numel() else 0.0,
               "mismatch/logprob_gap_max": gap.max().item() if gap.numel() else 0.0,
               "mismatch/kl": float(off["kl"]), "mismatch/k3_kl": float(off["k3_kl"])}
    if cfg.behaviour_logprobs != "rollout":
        return old, None, metrics
    weights, is_metrics = corr.compute_rollout_correction_weights(
        old - rollout_logprobs, mask.float(), rollout_is="token", rollout_is_threshold=cfg.rollout_is_threshold)
    clipped = (((old - rollout_logprobs).exp() > cfg.rollout_is_threshold) & mask).float().sum()
    metrics.update({"mismatch/is_weight_mean": float(is_metrics["rollout_is_mean"]),
                    "mismatch/is_truncated_frac": (clipped / mask.sum().clamp(min=1)).item()})
    return old, weights, metrics


def policy_objective(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                     advantages: torch.Tensor, response_mask: torch.Tensor, cfg: ObjectiveConfig,
                     entropy: torch.Tensor | None = None, global_batch_info: dict[str, Any] | None = None,
                     is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """verl policy loss (+ KL to the reference, - entropy bonus) as verl's actor assembles it.

    `global_batch_info` ({dp_size, batch_num_tokens, global_batch_size}) makes the loss of a
    micro-batch its share of the global-batch mean, so summing micro-batch gradients and averaging
    over data-parallel ranks gives the gradient of the full batch (verl's `agg_loss` contract).
    """
    from verl.trainer.ppo import core_algos

    actor_cfg = verl_actor_config(cfg, global_batch_info)
    mask = response_mask.bool()
    pg_loss, pg_metrics = core_algos.get_policy_loss_fn(cfg.policy_loss)(
        old_log_prob=old_logprobs, log_prob=logprobs, advantages=advantages, response_mask=mask,
        loss_agg_mode=cfg.loss_agg_mode, config=actor_cfg, rollout_is_weights=is_weights)
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


def verl_actor_config(cfg: ObjectiveConfig, global_batch_info: dict[str, Any] | None = None) -> Any:
    """verl's `ActorConfig` carrying `cfg`'s settings (what verl's policy-loss functions read)."""
    from verl.workers.config import ActorConfig, PolicyLossConfig

    low = cfg.clip_ratio if cfg.clip_ratio_low is None else cfg.clip_ratio_low
    high = cfg.clip_ratio if cfg.clip_ratio_high is None else cfg.clip_ratio_high
    return ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
        clip_ratio=cfg.clip_ratio, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=cfg.clip_ratio_c,
        loss_agg_mode=cfg.loss_agg_mode, policy_loss=PolicyLossConfig(loss_mode=cfg.policy_loss),
        entropy_coeff=cfg.entropy_coeff, use_kl_loss=cfg.kl_coef > 0, kl_loss_coef=cfg.kl_coef,
        kl_loss_type=cfg.kl_penalty, global_batch_info=dict(global_batch_info or {}),
    )


def verl_algo_config(cfg: ObjectiveConfig) -> Any:
    """verl's `AlgoConfig` carrying `cfg`'s settings (what verl's advantage estimators read)."""
    from verl.trainer.config import AlgoConfig

    return AlgoConfig(adv_estimator=cfg.adv_estimator, gamma=cfg.gamma,
                      norm_adv_by_std_in_grpo=cfg.norm_adv_by_std_in_grpo)
