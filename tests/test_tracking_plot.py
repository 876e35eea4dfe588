"""The reward-curve PNG: smoothed curves, curriculum stage changes and the held-out eval."""

from __future__ import annotations

import json

import pytest

from spacevista.tracking import _ema, plot_reward_curves


def test_ema_is_debiased_and_follows_a_constant():
    assert _ema([0.5] * 5, 0.8) == pytest.approx([0.5] * 5)
    assert _ema([0.0, 1.0], 0.5)[1] == pytest.approx(2 / 3)


def test_the_plot_marks_stages_and_the_eval_curve(tmp_path):
    rows = [{"step": s, "reward/fixed_total": 0.4 + 0.01 * s, "reward/indoor/fixed_total": 0.5,
             "curriculum/stage": float(s > 5)} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"step": s, "eval/fixed_total": 0.5}) + "\n"
                                                 for s in (0, 10)))
    out = plot_reward_curves(tmp_path)
    assert out == tmp_path / "reward_curves.png" and out.stat().st_size > 10_000
    assert plot_reward_curves(tmp_path / "empty") is None
