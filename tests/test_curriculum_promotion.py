"""The default curriculum advances because its promotion rule is met (not only at max_steps), and the
headline reward is the fixed-weight total, comparable across stages."""

from __future__ import annotations

import pytest

from spacevista.configs.loader import compose, to_train_config
from spacevista.curriculum import Curriculum


def stream(step: int, scales: list[str]) -> dict[str, dict[str, float]]:
    """Per-scale means as the tiny default logs them after SFT: sampled format climbing 0.45 -> 0.75, scale ~0.85."""
    fmt = min(0.75, 0.45 + 0.05 * step)
    return {s: {"format": fmt, "scale": 0.85, "accuracy": 0.1, "total": 0.5, "fixed_total": 0.4} for s in scales}


def test_the_default_curriculum_promotes_by_its_rule_before_max_steps():
    curriculum = Curriculum(to_train_config(compose([])).curriculum)
    assert curriculum.cfg.name == "progressive"
    changes = []
    for step in range(1, 41):
        change = curriculum.observe(step, stream(step, list(curriculum.scale_weights())))
        if change is not None:
            changes.append(change)
    assert [c.to_stage for c in changes] == ["room", "all"]
    for change in changes:
        assert change.reason.startswith("all active scales reached"), change.reason
    near, room = curriculum.cfg.stages[0], curriculum.cfg.stages[1]
    assert changes[0].step < near.max_steps and changes[1].step - changes[0].step < room.max_steps


def test_a_stage_stays_while_any_active_scale_is_below_its_bar():
    curriculum = Curriculum(to_train_config(compose([])).curriculum)
    for step in range(1, 10):
        metrics = stream(10, list(curriculum.scale_weights()))
        metrics["tabletop"]["scale"] = 0.5
        assert curriculum.observe(step, metrics) is None


def test_headline_reward_is_the_fixed_weight_total():
    from types import SimpleNamespace

    from spacevista.actors.controller import _scalars

    per_scale = {"all": {"total": 0.63, "fixed_total": 0.45, "format": 0.9},
                 "indoor": {"total": 0.7, "fixed_total": 0.5, "format": 1.0}}
    completions = [SimpleNamespace(response_ids=[1, 2], finish_reason="stop")]
    out = _scalars(per_scale, {}, completions, 0, {"generate": 1.0, "reward": 0.0, "learn": 1.0, "step": 2.0})
    assert out["reward/total"] == out["reward/fixed_total"] == pytest.approx(0.45)
    assert out["reward/stage_total"] == pytest.approx(0.63)
    assert (out["reward/indoor/total"], out["reward/indoor/stage_total"]) == (pytest.approx(0.5), pytest.approx(0.7))
