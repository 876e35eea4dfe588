"""Experts as data: the scale -> expert map, its config checks, label routing and the router's labels."""

from __future__ import annotations

import pytest

from spacevista.configs.checks import ConfigError, check_config
from spacevista.configs.experts import LAYOUTS, expert_map, expert_of, layout_problems
from spacevista.configs.loader import compose, to_train_config
from spacevista.scales import SCALES


def test_default_layout_is_one_expert_per_scale():
    cfg = to_train_config(compose([]))
    assert expert_map(cfg.model.experts, cfg.model.expert_of_scale) == {s: s for s in SCALES}
    assert expert_of("indoor", None) == "indoor"


def test_paper4_sends_drone_to_outdoor():
    cfg = to_train_config(compose(list(LAYOUTS["paper4"])))
    check_config(cfg)
    mapping = expert_map(cfg.model.experts, cfg.model.expert_of_scale)
    assert cfg.model.experts == ["tiny_tabletop", "tabletop", "indoor", "outdoor"]
    assert mapping["drone"] == "outdoor" and mapping["indoor"] == "indoor"


def test_one_expert_serves_every_scale():
    cfg = to_train_config(compose(list(LAYOUTS["shared"])))
    check_config(cfg)
    assert set(expert_map(cfg.model.experts, cfg.model.expert_of_scale).values()) == {"shared"}


@pytest.mark.parametrize("overrides, needle", [
    (["model.experts=[indoor,outdoor]", "curriculum=mixed"], "have no expert"),
    (["model.experts=[a,b]"], "serve no scale"),
    (["++model.expert_of_scale={drone:nowhere}"], "model.expert_of_scale.drone='nowhere'"),
    (["++model.expert_of_scale={moon:indoor}"], "model.expert_of_scale.moon: not a scale"),
    (["model.experts=[Bad-Name]"], "model.experts="),
])
def test_a_bad_map_fails_before_ray_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError, match="invalid config") as err:
        check_config(to_train_config(compose(overrides)))
    assert needle in str(err.value)


def test_layout_problems_accept_the_presets():
    assert layout_problems(list(SCALES), {}) == []
    assert layout_problems(["shared"], {}) == []
    assert layout_problems(["tiny_tabletop", "tabletop", "indoor", "outdoor"], {"drone": "outdoor"}) == []


def test_rollout_items_route_by_the_map():
    from spacevista.actors.controller import rollout_items, sft_samples
    from spacevista.datasets.synthetic.synth import synth_records

    records = [r for r in synth_records(40, seed=0, frames=2, size=32) if r.scale in ("drone", "indoor")][:4]
    mapping = expert_map(["tiny_tabletop", "tabletop", "indoor", "outdoor"], {"drone": "outdoor"})
    items = rollout_items(records, 1, mapping)
    assert [i.expert for i in items] == [mapping[r.scale] for r in records]
    assert [i.expert for i in rollout_items(records, 1)] == [r.scale for r in records]  # default: by name
    assert [s.scale_label for s in sft_samples(records, "sft1", mapping)] == [mapping[r.scale] for r in records]


def test_router_learns_the_expert_not_the_scale():
    from spacevista.policies.router import ScaleRouter

    router = ScaleRouter(["shared"], 8)
    assert router.label_index(["shared", None, "indoor"]).tolist() == [0, -1, -1]
    per_scale = ScaleRouter(list(SCALES), 8)
    assert per_scale.label_index(["indoor", "Tiny Tabletop"]).tolist() == [2, 0]  # scale spellings still work


def test_eval_label_routing_follows_the_checkpoints_map():
    from spacevista.eval.policy import EvalPolicy
    from spacevista.eval.run import _route

    class Rec:
        def __init__(self, scale: str):
            self.scale, self.id = scale, scale

    policy = EvalPolicy("p", None, ["tiny_tabletop", "tabletop", "indoor", "outdoor"],
                        expert_of_scale={"drone": "outdoor", "indoor": "indoor"})
    assert _route([Rec("drone"), Rec("indoor")], [], policy, "label", None) == ["outdoor", "indoor"]
