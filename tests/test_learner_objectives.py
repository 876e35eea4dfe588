"""Objectives are verl's: same advantages as calling core_algos directly, KL 0 at the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl.trainer.ppo import core_algos

from spacevista.learner.objectives import (
    ObjectiveConfig,
    compute_advantages,
    objective_problems,
    policy_objective,
)

SCORES = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.9, 0.3])
UIDS = ["a", "a", "a", "b", "b", "c", "c"]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0],
                     [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)


def _rewards() -> torch.Tensor:
    rewards = torch.zeros_like(MASK)
    rewards[torch.arange(len(SCORES)), MASK.sum(-1).long() - 1] = SCORES
    return rewards


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_advantages_match_verl(norm_by_std):
    cfg = ObjectiveConfig(adv_estimator="grpo", norm_adv_by_std_in_grpo=norm_by_std)
    expected, _ = core_algos.compute_grpo_outcome_advantage(_rewards(), MASK, np.array(UIDS, dtype=object),
                                                           norm_adv_by_std_in_grpo=norm_by_std)
    torch.testing.assert_close(compute_advantages(SCORES, MASK, UIDS, cfg), expected)
    assert compute_advantages(SCORES, MASK, UIDS, cfg)[0, 0] > 0 > compute_advantages(SCORES, MASK, UIDS, cfg)[1, 0]


def test_rloo_advantages_match_verl():
    expected, _ = core_algos.compute_rloo_outcome_advantage(_rewards(), MASK, np.array(UIDS, dtype=object))
    torch.testing.assert_close(compute_advantages(SCORES, MASK, UIDS, ObjectiveConfig(adv_estimator="rloo")), expected)


def test_reinforce_plus_plus_runs_through_verl():
    adv = compute_advantages(SCORES, MASK, UIDS, ObjectiveConfig(adv_estimator="reinforce_plus_plus"))
    assert adv.shape == MASK.shape and torch.all(adv[MASK == 0] == 0)


def test_kl_is_zero_when_policy_equals_reference():
    logprobs = -torch.rand(7, 4) * 3
    loss, metrics = policy_objective(logprobs, logprobs, logprobs.clone(), torch.randn(7, 4) * MASK, MASK,
                                     ObjectiveConfig(kl_coef=0.1))
    assert metrics["kl"] == 0.0 and metrics["ppo_kl"] == 0.0 and metrics["pg_clipfrac"] == 0.0
    assert loss.item() == pytest.approx(metrics["pg_loss"])


def test_clip_higher_keeps_ratios_a_symmetric_clip_would_cut():
    old = torch.full((1, 3), -2.0)
    new = old + torch.log(torch.tensor(1.25))  # ratio 1.25 with a positive advantage
    adv, mask = torch.ones(1, 3), torch.ones(1, 3)
    _, symmetric = policy_objective(new, old, None, adv, mask, ObjectiveConfig(kl_coef=0.0))
    _, dapo = policy_objective(new, old, None, adv, mask, ObjectiveConfig(clip_ratio_low=0.2, clip_ratio_high=0.28))
    assert symmetric["pg_clipfrac"] == 1.0 and dapo["pg_clipfrac"] == 0.0


def test_gspo_and_entropy_bonus():
    logprobs, adv = (-torch.rand(7, 4)).requires_grad_(), torch.randn(7, 4) * MASK
    entropy = torch.rand(7, 4)
    cfg = ObjectiveConfig(policy_loss="gspo", loss_agg_mode="seq-mean-token-mean", entropy_coeff=0.01, kl_coef=0.0)
    loss, metrics = policy_objective(logprobs, logprobs.detach(), None, adv, MASK, cfg, entropy=entropy)
    loss.backward()
    assert logprobs.grad is not None and "entropy" in metrics and "kl" not in metrics
    assert loss.item() == pytest.approx(metrics["pg_loss"] - 0.01 * metrics["entropy"], rel=1e-5)


@pytest.mark.parametrize("field,value", [("adv_estimator", "gae"), ("adv_estimator", "nope"),
                                         ("policy_loss", "nope")])
def test_what_verl_cannot_run_is_named_by_key(field, value):
    problems = objective_problems(ObjectiveConfig(**{field: value}), "learner.objective")
    assert len(problems) == 1 and problems[0].startswith(f"learner.objective.{field}={value!r}")
    assert objective_problems(ObjectiveConfig()) == []
