"""Reward plugins (decorator, module, file, entry point), their isolation, and the batch pipeline."""

import textwrap

import pytest

from reward_helpers import GOOD, RECORD
from spacevista.rewards import (PluginConfig, PluginLoadError, RewardConfig, RewardPipeline, RewardWeights,
                                available_rewards, load_reward, register_reward)
from spacevista.scales import format_output

pytestmark = pytest.mark.usefixtures("isolated_registry")  # tests/conftest.py


def write_plugin(directory, module, body):
    path = directory / f"{module}.py"
    path.write_text(textwrap.dedent(body))
    return path


def add_entry_point(monkeypatch, directory, name, target):
    """A distribution visible to importlib.metadata: a dist-info directory on sys.path."""
    dist_info = directory / "demo_rewards-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-rewards\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[spacevista.rewards]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(directory))


# ---- registration and loading -------------------------------------------------------------------
def test_builtins_are_registered_by_name():
    assert {"stepwise", "format", "scale", "numeric", "choice", "count", "text"} <= set(available_rewards())


def test_decorator_registers_a_reward_by_name():
    @register_reward("always_half")
    def always_half(data_source, solution_str, ground_truth, extra_info):
        return 0.5

    assert load_reward("always_half") == ("always_half", always_half)


def test_registering_another_function_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="'numeric' is already registered"):
        register_reward("numeric")(lambda **kw: 0.0)


def test_reward_from_module_and_function():
    name, fn = load_reward("spacevista.rewards.stepwise:compute_score")
    assert (name, fn("s", GOOD, RECORD, None)["score"]) == ("compute_score", 1.0)


def test_reward_from_a_python_file(tmp_path):
    path = write_plugin(tmp_path, "length_plugin", """
        def short_answer(data_source, solution_str, ground_truth, extra_info):
            return 1.0 if len(solution_str) < 100 else 0.0
    """)
    name, fn = load_reward(f"{path}:short_answer")
    assert (name, fn("s", GOOD, RECORD, None)) == ("short_answer", 1.0)


def test_reward_from_an_entry_point(monkeypatch, tmp_path):
    write_plugin(tmp_path, "demo_reward_module", """
        def has_think(data_source, solution_str, ground_truth, extra_info):
            return {"score": float("<think>" in solution_str)}
    """)
    add_entry_point(monkeypatch, tmp_path, "has_think", "demo_reward_module:has_think")
    assert available_rewards()["has_think"] == "entry point demo_reward_module:has_think"
    name, fn = load_reward("has_think")
    assert (name, fn("s", GOOD, RECORD, None)) == ("has_think", {"score": 1.0})


def test_entry_point_that_fails_to_import_names_spec_and_cause(monkeypatch, tmp_path):
    add_entry_point(monkeypatch, tmp_path, "ghost", "ghost_module_not_installed:score")
    with pytest.raises(PluginLoadError, match="cannot load reward 'ghost': ModuleNotFoundError"):
        load_reward("ghost")


def test_unknown_name_fails_listing_known_rewards():
    with pytest.raises(PluginLoadError, match=r"cannot load reward 'nope': no such reward; known: \[.*'stepwise'"):
        load_reward("nope")


def test_missing_module_fails_naming_spec_and_cause():
    with pytest.raises(PluginLoadError, match="cannot load reward 'no_such_mod:fn': ModuleNotFoundError"):
        load_reward("no_such_mod:fn")


def test_missing_file_fails_naming_spec_and_cause(tmp_path):
    with pytest.raises(PluginLoadError, match="cannot load reward '.*absent.py:fn': FileNotFoundError"):
        load_reward(f"{tmp_path}/absent.py:fn")


def test_file_that_fails_to_import_names_the_error(tmp_path):
    path = write_plugin(tmp_path, "broken_plugin", "import not_a_real_dependency\n")
    with pytest.raises(PluginLoadError, match="No module named 'not_a_real_dependency'"):
        load_reward(f"{path}:fn")


def test_missing_function_fails_naming_it(tmp_path):
    path = write_plugin(tmp_path, "empty_plugin", "x = 1\n")
    with pytest.raises(PluginLoadError, match="has no function 'fn'"):
        load_reward(f"{path}:fn")


# ---- pipeline -----------------------------------------------------------------------------------
def items(*completions, truth=RECORD):
    return [(truth, c, "spacevista", None) for c in completions]


def pipeline_with(fn, weight=1.0, **config):
    register_reward(fn.__name__)(fn)
    return RewardPipeline(RewardConfig(plugins=[PluginConfig(fn.__name__, weight)], **config))


def test_default_pipeline_scores_the_stepwise_reward():
    assert RewardPipeline().score_batch(items(GOOD))[0].components == {"format": 1.0, "scale": 1.0, "numeric": 1.0}


def test_pipeline_builds_from_the_reward_config():
    pipeline = RewardPipeline(RewardConfig(
        weights=RewardWeights(format=0, scale=1, accuracy=0), neighbour_scale_credit=0.5,
        plugins=[PluginConfig("spacevista.rewards.registry:format_score"),
                 PluginConfig("format", weight=2.0, name="format_bonus")]))
    breakdown = pipeline.score_batch(items(format_output("a", "outdoor", "3.2 m")))[0]
    assert breakdown.total == pytest.approx((1 * 0.5 + 1 * 1.0 + 2 * 1.0) / 4)


def test_plugin_score_is_an_extra_component_added_with_its_weight():
    def zero(data_source, solution_str, ground_truth, extra_info):
        return 0.0

    breakdown = pipeline_with(zero, weight=3.0).score_batch(items(GOOD))[0]
    assert (breakdown.components["zero"], breakdown.total) == (0.0, pytest.approx(1.0 / 4.0))


def test_plugin_receives_the_verl_arguments():
    seen = []

    def spy(data_source, solution_str, ground_truth, extra_info):
        seen.append((data_source, solution_str, ground_truth, extra_info))
        return 1.0

    pipeline_with(spy, isolate_plugins=False).score_batch([(RECORD, GOOD, "src", {"index": 7})])  # seen in-process
    assert seen == [("src", GOOD, RECORD, {"index": 7})]


@pytest.mark.parametrize(("result", "reason"), [
    (float("nan"), "returned nan, outside [0, 1]"),
    (float("inf"), "returned inf, outside [0, 1]"),
    (1.5, "returned 1.5, outside [0, 1]"),
    ("high", "returned str, not a number"),
    ({"value": 1.0}, "returned NoneType, not a number"),
])
def test_misbehaving_plugin_scores_zero_with_an_error_reason(result, reason):
    def bad(data_source, solution_str, ground_truth, extra_info):
        return result

    breakdown = pipeline_with(bad).score_batch(items(GOOD))[0]
    assert (breakdown.components["bad"], breakdown.reasons["bad"]) == (0.0, reason)


def test_raising_plugin_is_isolated_and_the_batch_goes_on():
    def fragile(data_source, solution_str, ground_truth, extra_info):
        if "boom" in solution_str:
            raise RuntimeError("boom")
        return 1.0

    pipeline = pipeline_with(fragile)
    breakdowns = pipeline.score_batch(items(format_output("boom", "indoor", "3.2 m"), GOOD))
    assert breakdowns[0].error == "plugin 'fragile' raised RuntimeError: boom"
    assert breakdowns[0].total == 1.0  # masked: the failed call's weight is left out, not scored 0
    assert breakdowns[0].terms == {"main": (1.0, 1.0), "fragile": (1.0, None)}
    assert (breakdowns[1].error, breakdowns[1].total) == (None, 1.0)
    assert pipeline.error_counts == {"fragile": 1}


def test_plugin_name_may_not_shadow_a_stepwise_component():
    with pytest.raises(ValueError, match="component name 'format' is taken"):
        RewardPipeline(RewardConfig(plugins=[PluginConfig("format")]))


def test_plugin_may_not_take_the_main_terms_name():
    with pytest.raises(ValueError, match="component name 'main' is taken"):
        RewardPipeline(RewardConfig(plugins=[PluginConfig("format", name="main")]))


def test_a_failing_named_main_reward_scores_zero_and_is_not_masked():
    def broken(data_source, solution_str, ground_truth, extra_info):
        raise RuntimeError("down")

    register_reward("broken")(broken)
    pipeline = RewardPipeline(RewardConfig(plugins=[PluginConfig("format", name="form")], isolate_plugins=False),
                              main="broken")
    breakdown = pipeline.score_batch(items(GOOD))[0]
    assert (breakdown.total, breakdown.terms) == (0.5, {"main": (1.0, 0.0), "form": (1.0, 1.0)})
    assert breakdown.error == "plugin 'broken' raised RuntimeError: down"


def test_plugin_can_be_renamed_to_avoid_a_clash():
    pipeline = RewardPipeline(RewardConfig(plugins=[PluginConfig("format", name="format_again")]))
    assert pipeline.score_batch(items(GOOD))[0].components["format_again"] == 1.0


def test_a_named_reward_can_replace_stepwise():
    breakdown = RewardPipeline(main="format").score_batch(items(GOOD + " bye"))[0]
    assert (breakdown.total, breakdown.components) == (0.0, {"format": 0.0})


def test_set_weights_applies_to_the_next_batch():
    pipeline = RewardPipeline()
    pipeline.set_weights(RewardWeights(format=1.0, scale=0.0, accuracy=0.0))
    assert pipeline.score_batch(items(format_output("a", "drone", "9 m")))[0].total == 1.0


def test_ground_truth_is_parsed_once_per_prompt_group(monkeypatch):
    from spacevista.rewards import pipeline as pipeline_module
    calls = []
    real = pipeline_module.parse_ground_truth
    monkeypatch.setattr(pipeline_module, "parse_ground_truth", lambda raw: calls.append(raw) or real(raw))
    other = {**RECORD, "scale": "drone"}
    RewardPipeline().score_batch(items(GOOD, GOOD, GOOD) + items(GOOD, GOOD, truth=other))
    assert calls == [RECORD, other]


def test_bad_ground_truth_gives_an_error_row_and_the_batch_goes_on():
    breakdowns = RewardPipeline().score_batch(items(GOOD, truth={"scale": "indoor"}) + items(GOOD))
    assert (breakdowns[0].total, breakdowns[0].error) == (0.0, "ground truth: ground truth lacks 'task'")
    assert breakdowns[1].total == 1.0


def test_pipeline_uses_stage_weights_given_as_dataclass():
    pipeline = RewardPipeline(RewardConfig(weights=RewardWeights(format=0, scale=0, accuracy=1, gate_scale=True)))
    assert pipeline.score_batch(items(format_output("a", "drone", "3.2 m")))[0].total == 0.0
