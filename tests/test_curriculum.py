"""The progressive curriculum: stage order, promotion rules, checkpointable state."""

import pytest

from spacevista.configs.loader import compose, to_train_config
from spacevista.configs.schema import CurriculumConfig, RewardWeights, StageConfig
from spacevista.curriculum import Curriculum, CurriculumError


def two_stage(window: int = 2, max_steps: int | None = None) -> CurriculumConfig:
    return CurriculumConfig(name="t", window=window, stages=[
        StageConfig(name="near", scales={"tabletop": 1.0}, min_steps=2, max_steps=max_steps,
                    promote_when={"format": 0.8}),
        StageConfig(name="all", scales={"tabletop": 1.0, "indoor": 1.0},
                    reward_weights=RewardWeights(0.1, 0.1, 0.8)),
    ])


def test_promotes_only_when_every_active_scale_meets_the_threshold_over_the_window():
    c = Curriculum(two_stage())
    assert c.observe(1, {"tabletop": {"format": 0.9}}) is None  # min_steps not reached
    assert c.observe(2, {"tabletop": {"format": 0.5}}) is None  # window mean 0.7 < 0.8
    change = c.observe(3, {"tabletop": {"format": 1.0}})        # window mean (0.5 + 1.0) / 2 < 0.8
    assert change is None
    change = c.observe(4, {"tabletop": {"format": 1.0}})
    assert change is not None and (change.from_stage, change.to_stage, change.step) == ("near", "all", 4)
    assert c.stage.name == "all" and c.scale_weights() == {"tabletop": 1.0, "indoor": 1.0}


def test_max_steps_promotes_even_when_metrics_lag():
    c = Curriculum(two_stage(max_steps=3))
    changes = [c.observe(s, {"tabletop": {"format": 0.0}}) for s in (1, 2, 3)]
    assert changes[:2] == [None, None] and changes[2].reason.startswith("max_steps")


def test_last_stage_never_ends():
    c = Curriculum(two_stage(max_steps=2))
    c.observe(1, {"tabletop": {"format": 1.0}})
    assert c.observe(2, {"tabletop": {"format": 1.0}}) is not None
    assert all(c.observe(s, {"tabletop": {"format": 1.0}}) is None for s in range(3, 20))


def test_state_dict_round_trip_continues_identically():
    a, b = Curriculum(two_stage()), Curriculum(two_stage())
    a.observe(1, {"tabletop": {"format": 0.9}})
    a.observe(2, {"tabletop": {"format": 0.7}})
    b.load_state_dict(a.state_dict())
    obs = {"tabletop": {"format": 1.0}}
    assert [a.observe(3, obs), a.observe(4, obs)] == [b.observe(3, obs), b.observe(4, obs)]
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize("stage, needle", [
    (StageConfig(name="x", scales={"moon": 1.0}), "unknown scale 'moon'"),
    (StageConfig(name="x", scales={}), "scales is empty"),
    (StageConfig(name="x", scales={"indoor": 1.0}, reward_weights=RewardWeights(0, 0, 0)), "reward_weights"),
    (StageConfig(name="x", scales={"indoor": 1.0}, min_steps=5, max_steps=2), "min_steps"),
])
def test_invalid_stage_is_rejected_naming_stage_and_field(stage, needle):
    with pytest.raises(CurriculumError, match="stage 0 .'x'.") as err:
        Curriculum(CurriculumConfig(name="bad", stages=[stage]))
    assert needle in str(err.value)


@pytest.mark.parametrize("name", ["progressive", "mixed"])
def test_builtin_curricula_load_and_start_where_documented(name):
    cfg = to_train_config(compose([f"curriculum={name}"]))
    c = Curriculum(cfg.curriculum)
    first = set(c.scale_weights())
    assert first == ({"tiny_tabletop", "tabletop"} if name == "progressive"
                     else {"tiny_tabletop", "tabletop", "indoor", "outdoor", "drone"})
    last = cfg.curriculum.stages[-1]
    assert set(last.scales) == {"tiny_tabletop", "tabletop", "indoor", "outdoor", "drone"}
    if name == "progressive":  # weight shifts from format/scale to accuracy
        assert last.reward_weights.accuracy > cfg.curriculum.stages[0].reward_weights.accuracy
