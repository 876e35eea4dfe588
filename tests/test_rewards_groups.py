"""A failed plugin call makes no false advantage: masked per sample, then left out of its whole GRPO group."""

import itertools

import pytest

from reward_helpers import GOOD, RECORD
from spacevista.rewards import (PluginConfig, RewardBreakdown, RewardConfig, RewardPipeline, group_totals,
                                register_reward, zero_variance_fraction)
from spacevista.rewards.stepwise import error_breakdown, terms_total

pytestmark = pytest.mark.usefixtures("isolated_registry")  # tests/conftest.py


def pipeline_with(fn, weight=1.0):
    """`fn` as an in-process plugin (no child process: fast, and a counter in it is seen)."""
    register_reward(fn.__name__)(fn)
    return RewardPipeline(RewardConfig(plugins=[PluginConfig(fn.__name__, weight)], isolate_plugins=False))


def failing_on(calls, score=0.5):
    """A plugin that raises on the given call numbers (0-based) and returns `score` otherwise."""
    counter = itertools.count()

    def flaky(data_source, solution_str, ground_truth, extra_info):
        if next(counter) in calls:
            raise RuntimeError("flaked")
        return score

    return flaky


def advantages(totals, uids):
    """GRPO's centred advantage: a total minus its group's mean."""
    means = {u: sum(t for t, v in zip(totals, uids) if v == u) / uids.count(u) for u in uids}
    return [t - means[u] for t, u in zip(totals, uids)]


def bits(values):
    return [float(v).hex() for v in values]


def test_the_failed_call_is_masked_out_of_that_samples_total():
    pipeline = pipeline_with(failing_on({0}), weight=3.0)
    failed, fine = pipeline.score_batch([(RECORD, GOOD, "s", None)] * 2)
    assert failed.total == 1.0  # the stepwise total alone, not (1 * W + 0 * 3) / (W + 3)
    assert failed.terms == {"main": (1.0, 1.0), "flaky": (3.0, None)}
    assert failed.error == "plugin 'flaky' raised RuntimeError: flaked"
    assert (failed.components["flaky"], failed.reasons["flaky"]) == (0.0, "raised RuntimeError: flaked")
    assert fine.total == pytest.approx((1.0 + 3 * 0.5) / 4) and fine.terms["flaky"] == (3.0, 0.5)
    assert pipeline.error_counts == {"flaky": 1}


def test_identical_completions_with_one_failed_call_get_identical_totals():
    breakdowns = pipeline_with(failing_on({2})).score_batch([(RECORD, GOOD, "s", None)] * 4)
    uids = ["p"] * 4
    assert len({b.total for b in breakdowns}) == 2  # masking the one sample alone: a false advantage
    totals = group_totals(breakdowns, uids)
    assert totals == [1.0] * 4 and advantages(totals, uids) == [0.0] * 4


def test_a_group_without_failures_keeps_its_totals_bit_for_bit():
    scores = iter([0.1, 0.7, 1 / 3])

    def varied(data_source, solution_str, ground_truth, extra_info):
        return next(scores)

    breakdowns = pipeline_with(varied, weight=0.3).score_batch([(RECORD, GOOD, "s", None)] * 3)
    assert bits(group_totals(breakdowns, ["p"] * 3)) == bits(b.total for b in breakdowns)
    assert bits(terms_total(b.terms) for b in breakdowns) == bits(b.total for b in breakdowns)


def test_a_failure_in_one_group_leaves_the_other_group_alone():
    breakdowns = pipeline_with(failing_on({1}, score=0.2)).score_batch([(RECORD, GOOD, "s", None)] * 4)
    uids = ["a", "a", "b", "b"]
    totals = group_totals(breakdowns, uids)
    assert totals[:2] == [1.0, 1.0]
    assert bits(totals[2:]) == bits(b.total for b in breakdowns[2:]) and totals[2] == pytest.approx(0.6)


def test_only_the_failed_plugin_is_left_out_of_the_group():
    def breakdown(magnitude):
        return RewardBreakdown(0.0, {}, {}, "indoor", "t",
                               terms={"main": (2.0, 1.0), "magnitude": (1.0, magnitude), "semantic": (1.0, 0.5)})

    totals = group_totals([breakdown(None), breakdown(0.0), breakdown(1.0)], [7, 7, 7])
    assert totals == [pytest.approx((2.0 + 0.5) / 3)] * 3


def test_samples_without_terms_keep_their_total():
    unscored = error_breakdown("ground truth: bad")
    failed = RewardBreakdown(0.5, {}, {}, None, None, terms={"main": (1.0, 0.5), "p": (1.0, None)})
    assert group_totals([unscored, failed], ["u", "u"]) == [0.0, 0.5]


def test_terms_total_clips_and_gives_zero_without_weight():
    assert terms_total({"main": (1.0, 1.0), "p": (0.0, 1.0)}) == 1.0
    assert terms_total({"main": (1.0, 0.4), "p": (1.0, None)}) == 0.4
    assert terms_total({"main": (1.0, 0.4)}, leave_out={"main"}) == 0.0


def test_zero_variance_fraction_counts_groups_with_all_totals_equal():
    totals = [1.0, 1.0, 0.5, 0.2, 0.3, 0.3, 0.7]
    uids = ["a", "a", "b", "b", "c", "c", "d"]  # a and c flat, b varies, d alone (no signal either)
    assert zero_variance_fraction(totals, uids) == 0.75
    assert zero_variance_fraction([], []) == 0.0


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 totals but 1 uids"):
        zero_variance_fraction([0.0, 1.0], ["a"])
    with pytest.raises(ValueError, match="1 breakdowns but 2 uids"):
        group_totals([error_breakdown("x")], ["a", "b"])
