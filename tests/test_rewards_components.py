"""Reward components: Mean Relative Accuracy, scale, numeric, choice, count, text."""

import pytest

from spacevista.rewards.components import (MRA_THRESHOLDS, choice_reward, count_reward, format_reward,
                                           mean_relative_accuracy, numeric_reward, scale_reward, text_reward)
from spacevista.grammar.parse import parse_completion
from spacevista.grammar.truth import parse_ground_truth
from spacevista.scales import format_output


def truth(answer_type, value, unit=None, choices=None, scale="indoor", task=None):
    task = task or {"numeric": "object_size", "choice": "closer", "count": "count", "text": "description"}[answer_type]
    return parse_ground_truth({"scale": scale, "task": task,
                               "answer": {"type": answer_type, "value": value, "unit": unit, "choices": choices}})


# ---- MRA ----------------------------------------------------------------------------------------
def test_mra_thresholds_are_fifty_to_ninety_five_percent_in_fives():
    assert MRA_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


# Evaluation compatibility: each expected value counted by hand from the definition,
# MRA = |{t in 0.50..0.95 : |pred - gt| / |gt| <= 1 - t}| / 10.
HAND_TABLE = [
    (1.0, 1.0, 1.0),  # rel 0: all ten
    (1.04, 1.0, 1.0),  # rel 0.04 <= 0.05: all ten
    (1.05, 1.0, 1.0),  # rel 0.05 = 1 - 0.95: all ten (boundary)
    (1.06, 1.0, 0.9),  # rel 0.06: t <= 0.94, nine
    (1.1, 1.0, 0.9),  # rel 0.1 = 1 - 0.9: t <= 0.9, nine (boundary)
    (2.2, 2.0, 0.9),  # rel 0.1 (float: 0.10000000000000009): nine
    (1.2, 1.0, 0.7),  # rel 0.2: 0.50 .. 0.80, seven
    (0.8, 1.0, 0.7),  # rel 0.2 below: seven
    (3.0, 4.0, 0.6),  # rel 0.25: 0.50 .. 0.75, six
    (0.7, 0.5, 0.3),  # rel 0.4: 0.50, 0.55, 0.60
    (2.9, 2.0, 0.2),  # rel 0.45: 0.50, 0.55
    (1.5, 1.0, 0.1),  # rel 0.5 = 1 - 0.5: only 0.50 (boundary)
    (0.5, 1.0, 0.1),  # rel 0.5 below
    (1.51, 1.0, 0.0),  # rel 0.51: none
    (3.0, 1.0, 0.0),  # rel 2: none
    (-1.0, 1.0, 0.0),  # wrong sign, rel 2: none
    (-1.1, -1.0, 0.9),  # negative truth: relative to |gt|
    (330.0, 300.0, 0.9),  # rel 0.1
    (12.0, 10.0, 0.7),  # rel 0.2
]


@pytest.mark.parametrize(("pred", "gt", "expected"), HAND_TABLE)
def test_mra_matches_hand_computed_table(pred, gt, expected):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(expected)


def test_mra_counts_threshold_half_at_exactly_fifty_percent_error():
    assert mean_relative_accuracy(1.5, 1.0) == 0.1


def test_mra_counts_ninety_five_despite_float_error():
    assert 1.05 - 1.0 > 0.05  # the float difference overshoots the tolerance
    assert mean_relative_accuracy(1.05, 1.0) == 1.0


def test_mra_just_past_a_boundary_loses_that_threshold():
    assert mean_relative_accuracy(1.0500001, 1.0) == 0.9


def test_mra_with_zero_truth_is_one_for_zero():
    assert mean_relative_accuracy(0.0, 0.0) == 1.0


def test_mra_with_zero_truth_is_zero_for_anything_else():
    assert mean_relative_accuracy(0.001, 0.0) == 0.0


def test_mra_of_nan_prediction_is_zero():
    assert mean_relative_accuracy(float("nan"), 1.0) == 0.0


def test_mra_of_infinite_prediction_is_zero():
    assert mean_relative_accuracy(float("inf"), 1.0) == 0.0


# ---- format and scale ---------------------------------------------------------------------------
def test_format_reward_is_one_for_a_valid_completion():
    assert format_reward(parse_completion(format_output("a", "indoor", "3 m"))) == (1.0, "ok")


def test_format_reward_is_zero_with_the_malformation_as_reason():
    assert format_reward(parse_completion("<answer>3 m</answer>")) == (0.0, "missing <think>")


def test_scale_reward_is_one_for_the_records_scale():
    assert scale_reward("Indoor", "indoor") == (1.0, "ok")


def test_scale_reward_gives_no_neighbour_credit_by_default():
    assert scale_reward("outdoor", "indoor")[0] == 0.0


def test_scale_reward_gives_configured_credit_to_a_neighbouring_scale():
    assert scale_reward("outdoor", "indoor", neighbour_credit=0.5)[0] == 0.5


def test_scale_reward_gives_no_credit_two_scales_away():
    assert scale_reward("drone", "indoor", neighbour_credit=0.5)[0] == 0.0


def test_scale_reward_without_a_scale_block_is_zero():
    assert scale_reward(None, "indoor") == (0.0, "no <scale> block")


# ---- numeric ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "value", "unit"), [
    ("350 cm", 3.5, "m"), ("3500 mm", 3.5, "m"), ("0.0035 km", 3.5, "m"), ("3.5 m", 350, "cm"),
    ("3.5", 3.5, "m"), ("1,200 mm", 1.2, "m"), ("2 m²", 20000, "cm2"), ("4 sq m", 4, "m2"),
    ("12 inches", 1, "ft"),
])
def test_numeric_reward_converts_to_the_records_unit(answer, value, unit):
    task = "area" if unit.endswith("2") else "object_size"
    assert numeric_reward(answer, truth("numeric", value, unit, task=task))[0] == 1.0


def test_numeric_reward_scores_mra_after_conversion():
    assert numeric_reward("150 cm", truth("numeric", 1.0, "m"))[0] == 0.1


def test_numeric_reward_rejects_a_unit_of_the_wrong_dimension():
    area = truth("numeric", 4, "m2", task="area")
    assert numeric_reward("4 m", area) == (0.0, "unit m does not measure what m2 does")


def test_numeric_reward_without_a_number_is_zero():
    assert numeric_reward("far", truth("numeric", 1.0, "m"))[0] == 0.0


def test_numeric_truth_without_unit_uses_the_scales_default_unit():
    assert truth("numeric", 35, None, scale="tabletop").unit == "cm"


# ---- choice, count, text ------------------------------------------------------------------------
def test_choice_reward_is_one_for_the_right_letter():
    assert choice_reward("(b)", truth("choice", "B", choices=["left", "right"]))[0] == 1.0


def test_choice_reward_is_zero_for_another_letter():
    assert choice_reward("A", truth("choice", "B", choices=["left", "right"])) == (0.0, "A vs B")


def test_choice_truth_may_be_given_as_the_option_text():
    assert truth("choice", "right", choices=["left", "right"]).value == "B"


def test_count_reward_is_exact_for_small_counts():
    assert count_reward("4", truth("count", 5))[0] == 0.0


def test_count_reward_accepts_number_words():
    assert count_reward("five", truth("count", 5))[0] == 1.0


def test_count_reward_uses_mra_above_the_exact_limit():
    assert count_reward("22", truth("count", 20))[0] == 0.9


def test_count_reward_exact_limit_is_configurable():
    assert count_reward("22", truth("count", 20), exact_max=100)[0] == 0.0


def test_text_reward_matches_after_normalisation():
    assert text_reward("The Wooden chair!", truth("text", "a wooden chair"))[0] == 1.0


def test_text_reward_is_zero_for_other_text():
    assert text_reward("a table", truth("text", "a wooden chair"))[0] == 0.0
