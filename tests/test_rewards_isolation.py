"""Reward plugins run isolated: a deadline per call, exits and crashes contained, output capped, errors counted."""

import time

import pytest

from spacevista.rewards.isolation import IsolatedReward
from spacevista.configs.schema import PluginConfig, RewardConfig
from spacevista.rewards.pipeline import RewardPipeline, plugin_errors

TRUTH = {"type": "numeric", "value": 1.0, "unit": "m", "choices": [], "scale": "indoor", "task": "object_size"}
GOOD = "<think>x</think><scale>indoor</scale><answer>1 m</answer>"

PLUGINS = '''
import os, sys, time
def steady(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0
def blocks(data_source, solution_str, ground_truth, extra_info=None):
    if "block" in solution_str:
        time.sleep(3600)
    return 1.0
def exits(data_source, solution_str, ground_truth, extra_info=None):
    sys.exit(3)
def dies(data_source, solution_str, ground_truth, extra_info=None):
    os._exit(9)
def chatty(data_source, solution_str, ground_truth, extra_info=None):
    print("x" * 100_000)
    os.write(2, b"written below Python\\n")
    raise ValueError("nope")
'''


@pytest.fixture
def plugins(tmp_path):
    path = tmp_path / "plugins.py"
    path.write_text(PLUGINS)
    return lambda name: f"{path}:{name}"


def _pipeline(specs, **config) -> RewardPipeline:
    return RewardPipeline(RewardConfig(plugins=[PluginConfig(s) for s in specs], **config))


def test_a_blocking_plugin_times_out_scores_zero_and_the_next_call_works(plugins):
    pipeline = _pipeline([plugins("blocks")], plugin_timeout_s=0.5)
    started = time.perf_counter()
    blocked, fine = pipeline.score_batch([(TRUTH, GOOD + "block", "", None), (TRUTH, GOOD, "", None)])
    assert time.perf_counter() - started < 5
    assert (blocked.components["blocks"], blocked.reasons["blocks"]) == (0.0, "timed out after 0.5 s")
    assert fine.components["blocks"] == 1.0 and pipeline.error_counts == {"blocks": 1}
    pipeline.close()


def test_a_plugin_timing_out_again_and_again_is_skipped_for_the_rest_of_the_batch(plugins):
    pipeline = _pipeline([plugins("blocks")], plugin_timeout_s=0.3)
    started = time.perf_counter()
    breakdowns = pipeline.score_batch([(TRUTH, GOOD + "block", "", None)] * 10)
    assert time.perf_counter() - started < 3  # 3 deadlines, not 10
    assert [b.reasons["blocks"].split(":")[0] for b in breakdowns[3:]] == ["skipped"] * 7
    assert plugin_errors(breakdowns) == {"blocks": 10}
    pipeline.close()


@pytest.mark.parametrize("name,reason", [("exits", "called sys.exit(3)"), ("dies", "plugin process exited with code 9"),
                                         ("chatty", "raised ValueError: nope")])
def test_exiting_crashing_or_raising_scores_zero_and_is_counted(plugins, name, reason):
    pipeline = _pipeline([plugins("steady"), plugins(name)], plugin_timeout_s=5)
    breakdowns = pipeline.score_batch([(TRUTH, GOOD, "", None)] * 3)
    assert [b.reasons[name] for b in breakdowns] == [reason] * 3
    assert all(b.components["steady"] == 1.0 and b.components[name] == 0.0 for b in breakdowns)
    assert plugin_errors(breakdowns) == {"steady": 0, name: 3}
    pipeline.close()


def test_output_is_captured_and_capped(plugins, capfd):
    from spacevista.rewards.registry import load_reward

    result = IsolatedReward("chatty", load_reward(plugins("chatty"))[1], 5, output_bytes=100)(
        "", GOOD, TRUTH, None)
    assert result.error == "raised ValueError: nope"
    assert result.output.startswith("x" * 100) and "more bytes of plugin output dropped" in result.output
    assert len(result.output) < 200
    assert "x" * 1000 not in capfd.readouterr().out  # nothing reached this process's stdout


def test_a_batch_where_a_plugin_mostly_fails_warns_once(plugins, capsys):
    pipeline = _pipeline([plugins("exits")])
    pipeline.score_batch([(TRUTH, GOOD, "", None)] * 4)
    err = capsys.readouterr().err
    assert err.count("warning: reward plugin 'exits' failed on 4 of 4 samples") == 1
    pipeline.close()


def test_builtin_rewards_stay_in_process():
    pipeline = RewardPipeline(RewardConfig(plugins=[PluginConfig("format", name="format_again")]))
    assert not isinstance(pipeline.plugins[0].call, IsolatedReward)
