"""ScaleSampler: weighted per-scale mixing, epoch-wise sampling without replacement, exact resume."""

import copy
import json
from collections import Counter

import pytest

from spacevista.records.sampler import ScaleSampler

SCALES = ["tiny_tabletop"] * 10 + ["tabletop"] * 20 + ["indoor"] * 30 + ["outdoor"] * 7 + ["drone"] * 3


def test_same_seed_draws_the_same_batches():
    a, b = ScaleSampler(SCALES, seed=3), ScaleSampler(SCALES, seed=3)
    assert [a.next_batch(8) for _ in range(10)] == [b.next_batch(8) for _ in range(10)]
    assert ScaleSampler(SCALES, seed=4).next_batch(8) != ScaleSampler(SCALES, seed=3).next_batch(8)


def test_batches_follow_the_mixing_weights():
    sampler = ScaleSampler(SCALES, weights={"indoor": 0.6, "tabletop": 0.3, "drone": 0.1}, seed=0)
    counts = Counter(SCALES[i] for _ in range(200) for i in sampler.next_batch(20))
    assert set(counts) == {"indoor", "tabletop", "drone"}
    assert counts["indoor"] / 4000 == pytest.approx(0.6, abs=0.03)
    assert counts["tabletop"] / 4000 == pytest.approx(0.3, abs=0.03)
    assert counts["drone"] / 4000 == pytest.approx(0.1, abs=0.02)


def test_each_scale_is_seen_once_per_epoch_without_replacement():
    sampler = ScaleSampler(SCALES, weights={"outdoor": 1.0}, seed=1)
    outdoor = [i for i, s in enumerate(SCALES) if s == "outdoor"]
    epochs = [sampler.next_batch(7) for _ in range(3)]  # 7 outdoor records: one epoch per batch
    assert all(sorted(epoch) == outdoor for epoch in epochs)
    assert sampler.state_dict()["scales"]["outdoor"] == {"epoch": 3, "cursor": 0, "num_records": 7}


def test_set_weights_switches_the_active_scales():
    sampler = ScaleSampler(SCALES, weights={"tiny_tabletop": 1.0}, seed=0)
    sampler.set_weights({"drone": 1.0, "outdoor": 1.0})
    assert sampler.active_scales == ["outdoor", "drone"]
    assert {SCALES[i] for i in sampler.next_batch(30)} == {"outdoor", "drone"}


def test_a_weighted_scale_without_records_is_an_error_naming_it():
    with pytest.raises(ValueError, match="scale 'drone' has weight 0.5 but no records"):
        ScaleSampler(["indoor"] * 4, weights={"indoor": 0.5, "drone": 0.5})


def test_resuming_from_state_dict_reproduces_the_future_batches():
    sampler = ScaleSampler(SCALES, seed=5)
    for _ in range(6):
        sampler.next_batch(7)
    sampler.set_weights({"indoor": 2.0, "drone": 1.0})
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a plain-data checkpoint
    expected = [sampler.next_batch(7) for _ in range(12)]
    resumed = ScaleSampler(SCALES, seed=0)
    resumed.load_state_dict(copy.deepcopy(state))
    assert [resumed.next_batch(7) for _ in range(12)] == expected


def test_loading_a_state_for_a_different_dataset_fails():
    state = ScaleSampler(SCALES, seed=0).state_dict()
    with pytest.raises(ValueError, match="scale 'drone': checkpoint has 3 records, dataset has 4"):
        ScaleSampler(SCALES + ["drone"]).load_state_dict(state)
