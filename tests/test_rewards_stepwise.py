"""Ground truth shapes, the stepwise combiner, compute_score and breakdown aggregation."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacevista.rewards import (GroundTruthError, RewardBreakdown, RewardWeights, StepwiseReward, aggregate_breakdowns,
                                compute_score, parse_ground_truth)
from spacevista.scales import SCALES, format_output

RECORD = {"scale": "indoor", "task": "object_size",
          "answer": {"type": "numeric", "value": 3.2, "unit": "m", "choices": None}}
FLAT = {"type": "numeric", "value": 3.2, "unit": "m", "choices": None, "scale": "indoor", "task": "object_size"}
GOOD = format_output("the sofa spans three tiles", "indoor", "320 cm")


# ---- ground truth -------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [RECORD, FLAT, json.dumps(FLAT), json.dumps(RECORD)])
def test_ground_truth_shapes_parse_alike(raw):
    assert parse_ground_truth(raw) == parse_ground_truth(RECORD)


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", "not valid JSON"),
    ({**FLAT, "scale": "galactic"}, "unknown scale 'galactic'"),
    ({**FLAT, "task": "juggling"}, "unknown task 'juggling'"),
    ({**FLAT, "type": "essay"}, "unknown answer type 'essay'"),
    ({k: v for k, v in FLAT.items() if k != "value"}, "lacks 'value'"),
    ({**FLAT, "unit": "parsec"}, "unknown unit 'parsec'"),
    ({**FLAT, "unit": "m2"}, "not a length unit"),
    ({**FLAT, "type": "choice", "value": "Z", "choices": ["a", "b"]}, "not a letter of the choices"),
])
def test_bad_ground_truth_raises_naming_the_problem(raw, message):
    with pytest.raises(GroundTruthError, match=message):
        parse_ground_truth(raw)


def test_numeric_truth_given_as_text_is_converted_to_the_records_unit():
    assert parse_ground_truth({**FLAT, "value": "320 cm"}).value == pytest.approx(3.2)


def test_empty_unit_means_the_scales_default_unit():
    assert parse_ground_truth({**FLAT, "unit": ""}).unit == "m"


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
FIELDS = st.fixed_dictionaries({}, optional={
    "scale": st.sampled_from(["indoor", "moon", 3]) | JSON_VALUES,
    "task": st.sampled_from(["area", "count"]) | JSON_VALUES,
    "type": st.sampled_from(["numeric", "choice", "count", "text"]) | JSON_VALUES, "value": JSON_VALUES,
    "unit": st.sampled_from(["m", "m2", "cm"]) | JSON_VALUES, "choices": JSON_VALUES})


@settings(max_examples=300, deadline=None, database=None)
@given(FIELDS)
def test_any_ground_truth_parses_or_raises_ground_truth_error(raw):
    try:
        parse_ground_truth(raw)
    except GroundTruthError:
        pass


# ---- weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [{"format": -0.1}, {"scale": float("nan")},
                                     {"format": 0, "scale": 0, "accuracy": 0}])
def test_invalid_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        StepwiseReward(RewardWeights(**weights))


# ---- stepwise -----------------------------------------------------------------------------------
def score(completion, weights=RewardWeights(), **options):
    return StepwiseReward(weights, **options).score(parse_ground_truth(RECORD), completion)


def test_perfect_completion_scores_one_with_every_component():
    breakdown = score(GOOD)
    assert (breakdown.total, breakdown.components) == (1.0, {"format": 1.0, "scale": 1.0, "numeric": 1.0})


def test_breakdown_carries_scale_task_and_reasons():
    breakdown = score(GOOD)
    assert (breakdown.scale, breakdown.task, breakdown.reasons["format"], breakdown.error) == \
        ("indoor", "object_size", "ok", None)


def test_total_is_the_normalised_weighted_sum():
    breakdown = score(format_output("a", "outdoor", "1.6 m"), RewardWeights(format=1, scale=1, accuracy=2))
    assert breakdown.total == pytest.approx((1 * 1.0 + 1 * 0.0 + 2 * 0.1) / 4)


def test_invalid_format_gates_the_answer():
    breakdown = score(GOOD + " bye")
    assert (breakdown.components["numeric"], breakdown.reasons["numeric"]) == (0.0, "gated: format invalid")


def test_invalid_format_still_earns_scale_credit():
    assert score(GOOD + " bye").total == pytest.approx(0.3)  # the default scale weight (format 0.2, scale 0.3)


def test_format_gate_can_be_lifted():
    assert score(GOOD + " bye", RewardWeights(gate_format=False)).components["numeric"] == 1.0


def test_answer_scores_with_a_wrong_scale_by_default():
    assert score(format_output("a", "drone", "3.2 m")).components["numeric"] == 1.0


def test_scale_before_answer_gate_withholds_answer_credit():
    breakdown = score(format_output("a", "drone", "3.2 m"), RewardWeights(gate_scale=True))
    assert (breakdown.components["numeric"], breakdown.reasons["numeric"]) == (0.0, "gated: scale not right")


def test_scale_gate_also_withholds_credit_for_a_neighbouring_scale():
    weights = RewardWeights(gate_scale=True)
    breakdown = score(format_output("a", "outdoor", "3.2 m"), weights, neighbour_scale_credit=0.5)
    assert breakdown.components == {"format": 1.0, "scale": 0.5, "numeric": 0.0}


def test_weights_can_change_between_steps():
    reward = StepwiseReward()
    truth = parse_ground_truth(RECORD)
    completion = format_output("a", "drone", "3.2 m")
    before = reward.score(truth, completion).total
    reward.weights = RewardWeights(format=0, scale=1, accuracy=0)
    assert (before, reward.score(truth, completion).total) == (pytest.approx(0.7), 0.0)  # format + answer


COMPLETIONS = st.one_of(
    st.text(max_size=200),
    st.builds(format_output, st.text(max_size=50), st.sampled_from([*SCALES, "", "moon"]),
              st.one_of(st.text(max_size=20), st.floats(allow_nan=True).map(lambda x: f"{x} cm"))),
)
TRUTHS = st.sampled_from([
    RECORD, {**FLAT, "value": 0.0}, {**FLAT, "type": "choice", "task": "closer", "value": "A", "choices": ["x", "y"]},
    {**FLAT, "type": "count", "task": "count", "value": 40},
    {**FLAT, "type": "text", "task": "description", "value": "a cup"},
])
WEIGHTS = st.builds(RewardWeights, st.floats(0, 10), st.floats(0, 10), st.floats(0.01, 10), st.booleans(),
                    st.booleans())


@settings(max_examples=300, deadline=None, database=None)
@given(COMPLETIONS, TRUTHS, WEIGHTS, st.floats(0, 1))
def test_every_score_stays_in_unit_interval(completion, raw, weights, credit):
    breakdown = StepwiseReward(weights, neighbour_scale_credit=credit).score(parse_ground_truth(raw), completion)
    assert 0.0 <= breakdown.total <= 1.0
    assert all(0.0 <= value <= 1.0 for value in breakdown.components.values())


# ---- compute_score (verl) -----------------------------------------------------------------------
def test_compute_score_takes_the_parquet_json_string():
    result = compute_score("spacevista", GOOD, json.dumps(FLAT), {"index": 0})
    assert result == {"score": 1.0, "format": 1.0, "scale": 1.0, "accuracy": 1.0, "answer_type": "numeric", "error": ""}


def test_compute_score_reports_a_bad_ground_truth_as_error_with_score_zero():
    result = compute_score("s", GOOD, {**FLAT, "task": "juggling"})
    assert (result["score"], result["error"]) == (0.0, "ground truth: unknown task 'juggling'")


def test_compute_score_keys_are_the_same_for_every_answer_type_and_errors():
    choice = {**FLAT, "type": "choice", "task": "closer", "value": "A", "choices": ["x", "y"]}
    results = [compute_score("s", GOOD, FLAT), compute_score("s", GOOD, choice), compute_score("s", GOOD, "{")]
    assert len({tuple(r) for r in results}) == 1


# ---- aggregation --------------------------------------------------------------------------------
def test_aggregate_means_components_per_scale_and_over_all():
    rows = aggregate_breakdowns([
        RewardBreakdown(1.0, {"format": 1.0, "numeric": 1.0}, {}, "indoor", "object_size"),
        RewardBreakdown(0.5, {"format": 1.0, "numeric": 0.0}, {}, "indoor", "object_size"),
        RewardBreakdown(0.0, {"format": 0.0, "choice": 0.0}, {}, "drone", "closer", "oops"),
    ])
    assert rows["indoor"] == {"n": 2.0, "errors": 0.0, "total": 0.75, "format": 1.0, "numeric": 0.5}
    assert rows["all"] == {"n": 3.0, "errors": 1.0, "total": 0.5, "format": pytest.approx(2 / 3), "numeric": 0.5,
                           "choice": 0.0}


def test_aggregate_by_task():
    rows = aggregate_breakdowns([RewardBreakdown(1.0, {}, {}, "indoor", "closer")], by="task")
    assert set(rows) == {"closer", "all"}


def test_rewards_package_imports_neither_torch_nor_ray():
    code = ("import sys, spacevista.rewards, spacevista.rewards.cli; "
            "print(sorted({'torch', 'ray', 'verl'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
