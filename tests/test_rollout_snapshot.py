"""The policy snapshot a rollout worker serves: versions only grow, a fresh worker is behind on every part,
a step's change replaces only the parts it moved."""

from __future__ import annotations

import pytest

from spacevista.rollout.snapshot import DENSE_PART, INITIAL_VERSION, PolicySnapshot


def test_a_fresh_worker_is_behind_on_every_part_even_at_version_zero():
    snapshot = PolicySnapshot(0, {"indoor": (0, "w-indoor"), "outdoor": (0, "w-outdoor")}, (0, "w-dense"))
    experts, dense = snapshot.behind({})
    assert experts == {"indoor": "w-indoor", "outdoor": "w-outdoor"} and dense == "w-dense"
    assert INITIAL_VERSION < 0


def test_a_step_change_replaces_only_the_parts_it_moved():
    after_sft = PolicySnapshot(3, {"indoor": (3, "a"), "outdoor": (3, "b")}, (3, "d"))
    held = after_sft.part_versions()
    assert held == {"indoor": 3, "outdoor": 3, DENSE_PART: 3}
    step = after_sft.updated(PolicySnapshot(4, {"indoor": (4, "a2")}))
    assert step.version == 4 and step.experts == {"indoor": (4, "a2"), "outdoor": (3, "b")} and step.dense == (3, "d")
    assert step.behind(held) == ({"indoor": "a2"}, None)  # a worker that held step 3 pulls one expert
    assert step.behind({}) == ({"indoor": "a2", "outdoor": "b"}, "d")  # a restarted worker pulls all


def test_a_change_older_than_the_snapshot_is_refused():
    with pytest.raises(ValueError, match="version 2 is older than the served 5"):
        PolicySnapshot(5).updated(PolicySnapshot(2))
