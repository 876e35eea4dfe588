"""The RL learning-rate schedule starts with RL: the SFT warm-up runs at the base rate and does not
use up the schedule's warm-up or horizon."""

from __future__ import annotations

import math

import pytest
import torch

from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore
from spacevista.learner.optim import OptimConfig
from spacevista.scales import SCALES, format_output

LR = 1e-2


def test_sft_steps_run_at_the_base_rate_and_leave_the_cosine_schedule_untouched(tiny_policy_dir, policy_samples):
    torch.manual_seed(0)
    optim = OptimConfig(lr=LR, schedule="cosine", warmup_steps=2, total_steps=6)
    learner = LearnerCore(tiny_policy_dir, SCALES, optim=optim, micro_batch_size=4)
    sft = policy_samples(4, ["indoor"])
    for _ in range(3):  # more SFT steps than the schedule's warm-up
        metrics = learner.sft_step(sft, [format_output("x", "indoor", "1 m")] * len(sft))
        assert metrics["lr"] == LR
    rl = collate(learner.processor, policy_samples(4, ["indoor"], seed=1))
    lrs = [learner.rl_step(rl)["lr"] for _ in range(6)]
    # linear warm-up over 2 steps, then half a cosine over the remaining 4 (transformers' schedule)
    expected = [0.0, LR / 2] + [LR * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected, abs=1e-12)
