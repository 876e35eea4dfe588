"""The controller's advantage path (scores -> `response_advantages` -> TrainSample -> collate) equals
verl's estimator called directly on the real response mask, for every shipped learner config."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos

from spacevista.actors.controller import train_samples
from spacevista.configs.loader import compose, to_train_config
from spacevista.learner.batch import collate
from spacevista.learner.objectives import (
    compute_advantages,
    outcome_token_rewards,
    response_advantages,
)
from spacevista.policies.prompts import encode_prompts
from spacevista.rollout.engine import Completion, GenerationRequest

LENGTHS = [3, 7, 1, 5, 6, 2, 4, 7]  # 4 prompts x 2 samples, ragged responses
N = 2


def _verl(name: str, scores: torch.Tensor, mask: torch.Tensor, uids: list[str], objective) -> torch.Tensor:
    fn = core_algos.get_adv_estimator_fn(name)
    kwargs = dict(token_level_rewards=outcome_token_rewards(scores, mask), response_mask=mask,
                  index=np.asarray(uids, dtype=object),
                  config=AlgoConfig(adv_estimator=name, gamma=objective.gamma,
                                    norm_adv_by_std_in_grpo=objective.norm_adv_by_std_in_grpo))
    if name == "grpo":
        kwargs["norm_adv_by_std_in_grpo"] = objective.norm_adv_by_std_in_grpo
    return fn(**kwargs)[0]


def _objective(learner: str, *overrides: str):
    return to_train_config(compose([f"learner={learner}", *overrides])).learner.objective


@pytest.mark.parametrize(("learner", "overrides"), [
    ("grpo", ()), ("rloo", ()), ("reinforce_pp", ()), ("reinforce_pp", ("learner.objective.gamma=0.9",)),
    ("dapo", ()), ("grpo", ("learner.objective.adv_estimator=opo",)),
])
def test_controller_advantages_equal_verl_on_the_real_response_mask(tiny_policy_dir, learner, overrides):
    from transformers import AutoProcessor

    objective = _objective(learner, *overrides)
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.uniform(0, 1, len(LENGTHS)), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_policy_dir)
    requests = [GenerationRequest(f"p{i}", [{"role": "user", "content": f"question {i}"}], "indoor")
                for i in range(len(LENGTHS) // N)]
    prompts = encode_prompts(processor, requests)
    uids = [r.request_id for r in requests for _ in range(N)]
    completions = [Completion(uids[i], i % N, "indoor", prompts[i // N], [5] * k, "", [-1.0] * k, "length", 0)
                   for i, k in enumerate(LENGTHS)]
    advantages = response_advantages(scores, LENGTHS, uids, objective)
    items = [SimpleNamespace(request_id=r.request_id, expert="indoor",
                             record=SimpleNamespace(scale="indoor", id=r.request_id)) for r in requests]
    batch = collate(processor, train_samples(items, completions, advantages, N))

    mask = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, k in enumerate(LENGTHS):
        mask[i, :k] = 1
    expected = _verl(objective.adv_estimator, scores, mask, uids, objective) * mask
    assert torch.allclose(batch.batch["advantages"], expected, atol=1e-6)


def test_a_one_token_mask_is_wrong_for_reinforce_plus_plus():
    """What the controller did before: the test above can tell the two apart."""
    objective = _objective("reinforce_pp", "learner.objective.gamma=0.9")
    scores = torch.tensor([0.2, 0.9, 0.4, 0.7])
    uids = ["a", "a", "b", "b"]
    one_token = compute_advantages(scores, torch.ones(4, 1), uids, objective)[:, 0]
    real = response_advantages(scores, [3, 5, 2, 4], uids, objective)
    assert not all(row == pytest.approx([float(one_token[i])] * len(row)) for i, row in enumerate(real))
