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


class FakeTensorBoard:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def flush(self):
        pass

    def close(self):
        pass


def test_non_finite_values_are_null_in_the_log_a_gap_in_tensorboard_and_shown(tmp_path, capsys):
    import numpy as np

    from spacevista.configs.schema import LogConfig
    from spacevista.tracking import Tracker, read_history

    tracker = Tracker(tmp_path, LogConfig(tensorboard=False, progress=False), total_steps=3, start_step=0)
    tracker.tb = FakeTensorBoard()
    tracker.log(1, {"loss": float("nan"), "reward/total": np.float32(0.5), "grad": float("inf"), "x": "s"}, {})
    tracker.log(2, {"loss": 1.0, "reward/total": 0.25, "grad": float("inf")}, {})
    tracker.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"step": 1, "loss": None, "reward/total": 0.5, "grad": None, "x": None},
        {"step": 2, "loss": 1.0, "reward/total": 0.25, "grad": None}]
    assert tracker.nonfinite == {"loss": 1, "grad": 2, "x": 1}
    assert tracker.tb.scalars == [("reward/total", 0.5, 1), ("tracking/nonfinite_metrics", 3.0, 1),
                                  ("loss", 1.0, 2), ("reward/total", 0.25, 2), ("tracking/nonfinite_metrics", 1.0, 2)]
    out = capsys.readouterr().out
    assert "step 1: non-finite metrics" in out and "loss=nan, grad=inf, x=str" in out
    assert "step 2: non-finite metrics" in out and "grad=inf" in out
    assert read_history(tmp_path) == [{"step": 1, "reward/total": 0.5}, {"step": 2, "loss": 1.0, "reward/total": 0.25}]
    assert read_history(tmp_path, nulls=True)[0]["loss"] is None


def test_the_plot_skips_nulls(tmp_path):
    rows = [{"step": s, "reward/fixed_total": None if s % 3 == 0 else 0.5, "reward/indoor/fixed_total": None,
             "curriculum/stage": None if s == 4 else float(s > 5)} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 0, "eval/fixed_total": None}) + "\n")
    out = plot_reward_curves(tmp_path)
    assert out is not None and out.stat().st_size > 10_000
