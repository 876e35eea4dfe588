"""Behaviour log-probs (recompute vs rollout with truncated importance weights), the mismatch metrics, and the
non-finite guard: a step with a NaN loss is skipped and counted, K in a row stop the run naming the step."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore, NonFiniteSteps
from spacevista.learner.objectives import ObjectiveConfig, behaviour_correction
from spacevista.learner.optim import OptimConfig
from spacevista.scales import SCALES


def _learner(path, **kwargs) -> LearnerCore:
    torch.manual_seed(0)
    return LearnerCore(path, SCALES, optim=OptimConfig(lr=1e-2), micro_batch_size=4, **kwargs)


def _state(learner: LearnerCore) -> dict[str, torch.Tensor]:
    return {f"{e}/{k}": v.clone() for e, sd in learner.expert_state_dicts().items() for k, v in sd.items()}


def test_correction_metrics_and_truncated_weights_by_hand():
    learner = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    rollout = torch.tensor([[-1.0, -3.0, -0.1, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    old, weights, m = behaviour_correction(learner, rollout, mask, ObjectiveConfig(behaviour_logprobs="rollout",
                                                                                   rollout_is_threshold=2.0))
    assert torch.equal(old, learner)
    assert m["mismatch/logprob_gap_mean"] == pytest.approx((0 + 1 + 0.4) / 3)
    assert m["mismatch/logprob_gap_max"] == pytest.approx(1.0)  # the padded token's gap of 9 is not counted
    assert m["mismatch/kl"] == pytest.approx(((-1 + 1) + (-3 + 2) + (-0.1 + 0.5)) / 3)
    # token TIS: exp(learner - rollout), truncated at 2; padding weighs 0
    assert weights[0].tolist() == pytest.approx([1.0, 2.0, math.exp(-0.4), 0.0])
    assert m["mismatch/is_truncated_frac"] == pytest.approx(1 / 3)
    _, none, plain = behaviour_correction(learner, rollout, mask, ObjectiveConfig(behaviour_logprobs="recompute"))
    assert none is None and plain["mismatch/logprob_gap_max"] == m["mismatch/logprob_gap_max"]


@pytest.mark.parametrize("mode", ["recompute", "rollout"])
def test_equal_rollout_logprobs_give_the_recompute_step(tiny_policy_dir, policy_samples, mode):
    """When the sampler's log-probs are the learner's own, both modes take the on-policy step exactly."""
    samples = policy_samples(6, SCALES[:3], seed=5)
    reference = _learner(tiny_policy_dir)
    reference_metrics = reference.rl_step(collate(reference.processor, samples))
    probe = _learner(tiny_policy_dir)  # the learner's own log-probs of the sampled tokens, as a perfect sampler
    from spacevista.learner.logprobs import policy_logprobs

    batch = collate(probe.processor, samples)
    with torch.no_grad():
        own, _ = policy_logprobs(probe.model, batch, probe.temperature)
    mask = batch.batch["response_mask"].bool()
    exact = [own[i][mask[i]].tolist() for i in range(len(samples))]
    learner = _learner(tiny_policy_dir, objective=ObjectiveConfig(behaviour_logprobs=mode))
    metrics = learner.rl_step(collate(learner.processor, [replace(s, rollout_logprobs=lp)
                                                           for s, lp in zip(samples, exact)]))
    assert metrics["mismatch/logprob_gap_max"] < 1e-5
    if mode == "rollout":
        assert metrics["mismatch/is_truncated_frac"] == 0.0
    else:
        assert "mismatch/is_weight_mean" not in metrics
    assert metrics["loss"] == pytest.approx(reference_metrics["loss"], rel=1e-6)
    assert metrics["grad_norm"] == pytest.approx(reference_metrics["grad_norm"], rel=1e-5)
    # Adam's first step is g / (|g| + eps): for a gradient near eps, weights of 1 +- 5e-7 move it by a fraction of lr
    a, b = _state(reference), _state(learner)
    assert all(torch.allclose(a[k], b[k], atol=1e-6 if mode == "recompute" else 1e-2 * 1e-2) for k in a)


def test_rollout_mode_weights_the_step_and_recompute_does_not(tiny_policy_dir, policy_samples):
    """Made-up rollout log-probs (-4 to -7) far from the learner's weigh the tokens unequally: the step differs."""
    samples = policy_samples(6, SCALES[:3], seed=6, with_rollout_logprobs=True)
    moved = {}
    for mode in ("recompute", "rollout"):
        learner = _learner(tiny_policy_dir, objective=ObjectiveConfig(behaviour_logprobs=mode, kl_coef=0.0))
        before = _state(learner)
        metrics = learner.rl_step(collate(learner.processor, samples))
        moved[mode] = {k: v - before[k] for k, v in _state(learner).items()}
        if mode == "rollout":
            assert abs(metrics["mismatch/is_weight_mean"] - 1.0) > 0.1 and metrics["mismatch/is_truncated_frac"] > 0
    assert any(not torch.allclose(moved["recompute"][k], moved["rollout"][k]) for k in moved["recompute"])


def test_a_nan_step_is_skipped_and_counted_and_k_in_a_row_stop(tiny_policy_dir, policy_samples):
    learner = _learner(tiny_policy_dir, max_nonfinite_steps=2)
    good = policy_samples(6, SCALES[:2], seed=7)
    bad = [replace(s, advantage=float("nan")) if i == 0 else s for i, s in enumerate(good)]
    optimizer_state = len(learner.optimizer.state)
    before = _state(learner)
    metrics = learner.rl_step(collate(learner.processor, bad))
    assert metrics["nonfinite"] == 1.0 and not math.isfinite(metrics["loss"])
    assert all(torch.equal(before[k], v) for k, v in _state(learner).items())  # nothing moved
    assert len(learner.optimizer.state) == optimizer_state and learner.stepped_experts == []
    metrics = learner.rl_step(collate(learner.processor, good))  # a finite step resets the count
    assert metrics["nonfinite"] == 0.0 and learner.nonfinite_in_row == 0
    assert learner.stepped_experts and any(not torch.equal(before[k], v) for k, v in _state(learner).items())
    learner.rl_step(collate(learner.processor, bad))
    with pytest.raises(NonFiniteSteps, match=r"learner step 4: .* 2 steps in a row \(learner.max_nonfinite_steps=2\)"):
        learner.rl_step(collate(learner.processor, bad))
