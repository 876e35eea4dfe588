"""What the controller logs per scale: one definition of accuracy, no name collisions."""

from __future__ import annotations

import pytest

from spacevista.actors.controller import per_scale_means
from spacevista.configs.schema import RewardWeights
from spacevista.rewards.stepwise import RewardBreakdown


def _breakdown(scale: str, answer: str, value: float) -> RewardBreakdown:
    return RewardBreakdown(0.5, {"format": 1.0, "scale": 1.0, answer: value}, {}, scale, "t")


def test_count_component_and_sample_count_do_not_collide():
    rows = per_scale_means([_breakdown("indoor", "count", 0.25), _breakdown("indoor", "count", 0.75),
                            _breakdown("indoor", "numeric", 1.0)], RewardWeights())
    assert rows["indoor"]["count"] == pytest.approx(0.5)  # the counting tasks' answer component
    assert rows["indoor"]["samples"] == 3


def test_accuracy_is_the_mean_over_samples_of_their_answer_component():
    rows = per_scale_means([_breakdown("indoor", "count", 0.0), _breakdown("indoor", "count", 0.0),
                            _breakdown("indoor", "numeric", 0.9)], RewardWeights())
    assert rows["indoor"]["accuracy"] == pytest.approx(0.3)  # not the mean of per-type means (0.45)
    assert rows["all"]["accuracy"] == pytest.approx(0.3)


def test_plugins_get_the_records_extra_info_in_training():
    from spacevista.actors.controller import score_items
    from spacevista.records.schema import Answer, Record
    from spacevista.rollout.engine import Completion

    record = Record(id="r1", scale="indoor", task="object_size", answer=Answer("numeric", "2", "m"),
                    prompt=[{"role": "user", "content": "how long?"}], meta={"source_task": "WIDTH"})
    completions = [Completion("q", k, "indoor", None, [1], f"text {k}", [0.0], "stop", 0) for k in range(2)]
    items = score_items([record], completions, 2)
    assert [i[3] for i in items] == [record.to_row()["extra_info"]] * 2  # what verl passes from the parquet row
    assert items[1][:3] == (record.ground_truth_dict(), "text 1", record.data_source)
