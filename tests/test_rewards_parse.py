"""Parsing completions: the output format, quantities with units, choices, counts, text."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacevista.grammar.parse import (MAX_COMPLETION_CHARS, NoAnswer, ParsedCompletion, normalise_text, parse_choice,
                                      parse_completion, parse_count, parse_quantity, parse_scale, unit_symbol)
from spacevista.scales import AREA_UNITS, LENGTH_UNITS, format_output

VALID = format_output("the sofa is about three metres wide", "indoor", "3.2 m")


# ---- format -------------------------------------------------------------------------------------
def test_valid_completion_splits_into_its_blocks():
    parsed = parse_completion(VALID)
    assert parsed == ParsedCompletion("the sofa is about three metres wide", "indoor", "3.2 m", None)


def test_whitespace_around_and_between_blocks_is_valid():
    text = "\n<think> a </think>\n <scale>indoor</scale>\n<answer>3 m</answer>\n\n"
    assert parse_completion(text).format_error is None


def test_think_may_contain_angle_brackets():
    text = format_output("1 < 2 and 3 > 2", "indoor", "3 m")
    assert parse_completion(text).format_error is None


@pytest.mark.parametrize(("text", "reason"), [
    ("<scale>indoor</scale><answer>3 m</answer>", "missing <think>"),
    ("<think>a</think><answer>3 m</answer>", "missing <scale>"),
    ("<think>a</think><scale>indoor</scale>", "missing <answer>"),
    ("<think>a</think><scale>indoor</scale><answer>3 m", "unclosed <answer>"),
    ("<think>a<scale>indoor</scale><answer>3 m</answer>", "unclosed <think>"),
    ("<think>a</think>indoor</scale><answer>3 m</answer>", "</scale> without <scale>"),
    ("<think>a</think><think>b</think><scale>indoor</scale><answer>3 m</answer>", "duplicated <think>"),
    ("<think>a</think><scale>indoor</scale><answer>3 m</answer><answer>4 m</answer>", "duplicated <answer>"),
    ("<think>a</think><scale>indoor</scale><answer>3 m</answer></answer>", "duplicated </answer>"),
    ("<think>a</think></scale>indoor<scale><answer>3 m</answer>", "</scale> before <scale>"),
    ("<think>a</think><answer>3 m</answer><scale>indoor</scale>", "misordered: <answer> before </scale>"),
    ("<scale>indoor</scale><think>a</think><answer>3 m</answer>", "misordered: <scale> before </think>"),
    ("<think>a<scale>indoor</scale></think><answer>3 m</answer>", "<scale> nested inside <think>"),
    ("<think>a</think><scale>indoor</scale><answer>3 m</answer> thanks", "text after </answer>"),
    ("Sure! <think>a</think><scale>indoor</scale><answer>3 m</answer>", "text before <think>"),
    ("<think>a</think> so <scale>indoor</scale><answer>3 m</answer>", "text between </think> and <scale>"),
])
def test_each_malformation_is_named(text, reason):
    assert parse_completion(text).format_error == reason


def test_blocks_are_read_even_when_the_format_is_invalid():
    parsed = parse_completion("<think>a</think><scale>indoor</scale><answer>3 m</answer> thanks")
    assert (parsed.scale, parsed.answer) == ("indoor", "3 m")


def test_duplicated_answer_reads_the_last_block():
    text = "<think>a</think><scale>indoor</scale><answer>3 m</answer><answer>4 m</answer>"
    assert parse_completion(text).answer == "4 m"


def test_overlong_completion_is_truncated_and_says_so():
    text = format_output("x" * MAX_COMPLETION_CHARS, "indoor", "3 m")
    parsed = parse_completion(text)
    assert parsed.format_error.startswith(f"completion over {MAX_COMPLETION_CHARS} chars, truncated")
    assert parsed.answer is None


def test_non_string_completion_is_a_format_error_not_an_exception():
    assert parse_completion(None).format_error == "completion is NoneType, not str"  # type: ignore[arg-type]


# ---- scale --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "scale"), [
    ("indoor", "indoor"), (" Tiny Tabletop ", "tiny_tabletop"), ("TinyTabletop", "tiny_tabletop"), ("UAV", "drone"),
])
def test_scale_spellings_map_to_scale_names(text, scale):
    assert parse_scale(text) == scale


def test_unknown_scale_is_no_answer():
    assert parse_scale("galactic") == NoAnswer("unknown scale 'galactic'")


# ---- quantities ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "quantity"), [
    ("3.5 m", (3.5, "m")),
    ("350cm", (350.0, "cm")),
    ("1,200 mm", (1200.0, "mm")),
    ("1.2 km", (1.2, "km")),
    ("12 millimeters", (12.0, "mm")),
    ("0.5 metres", (0.5, "m")),
    ("3.2 meters", (3.2, "m")),
    ("6 feet", (6.0, "ft")),
    ("2 m²", (2.0, "m2")),
    ("2 m^2", (2.0, "m2")),
    ("5m2", (5.0, "m2")),
    ("4 sq m", (4.0, "m2")),
    ("4 sq. ft", (4.0, "ft2")),
    ("4 square meters", (4.0, "m2")),
    ("3 hectares", (3.0, "ha")),
    ("1.5e3 mm", (1500.0, "mm")),
    ("2E-1 m", (0.2, "m")),
    ("-0.75 m", (-0.75, "m")),
    (".5 m", (0.5, "m")),
    ("3.5", (3.5, None)),
    ("about 3.5 m, maybe 4 m", (3.5, "m")),
    ("3 chairs", (3.0, None)),
])
def test_quantity_forms(text, quantity):
    assert parse_quantity(text) == quantity


def test_text_without_a_number_is_no_answer():
    assert parse_quantity("far away") == NoAnswer("no number in 'far away'")


def test_number_too_large_for_a_float_is_no_answer():
    assert not parse_quantity("1e999 m")


def test_missing_answer_block_is_no_answer():
    assert parse_quantity(None) == NoAnswer("no <answer> block")


def test_every_scales_unit_symbol_is_understood():
    assert all(unit_symbol(u) == u for u in (*LENGTH_UNITS, *AREA_UNITS))


# ---- choices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["B", "(b)", "(B)", "B. left", "B) left", "b", "b. left", "Answer: B",
                                  "The answer is (b)", "option B"])
def test_choice_letter_forms(text):
    assert parse_choice(text) == "B"


def test_choice_by_the_text_of_an_option():
    assert parse_choice("Right.", ("left", "right")) == "B"


def test_choice_by_option_text_ignores_the_options_letter_label():
    assert parse_choice("right", ("A. left", "B. right")) == "B"


def test_choice_without_a_letter_is_no_answer():
    assert not parse_choice("it is on the left side")


# ---- counts -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "count"), [("3", 3), ("three", 3), ("Three chairs", 3), ("3.0", 3),
                                             ("1,200", 1200), ("there are 12", 12), ("zero", 0)])
def test_count_forms(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["-2", "2.5", "many"])
def test_non_counts_are_no_answer(text):
    assert not parse_count(text)


def test_text_normalisation_drops_case_punctuation_articles_and_spacing():
    assert normalise_text("  The  Wooden-Chair, a red one. ") == "wooden chair red one"


# ---- robustness ---------------------------------------------------------------------------------
FRAGMENTS = st.sampled_from(["<think>", "</think>", "<scale>", "</scale>", "<answer>", "</answer>", "indoor",
                             "3.5 m", "1,2,3", "e-", "²", "sq", "B.", "(", " ", "\n", "-", "."])


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=20)), max_size=30).map("".join))
def test_parsers_never_raise(text):
    parsed = parse_completion(text)
    for part in (parsed.scale, parsed.answer, text):
        parse_scale(part)
        parse_quantity(part)
        parse_choice(part, ("left", "right"))
        parse_count(part)


@pytest.mark.parametrize("text", ["1" * 5000 + "x", "1." * 5000, " " * 5000 + "1", "1e" * 5000, "answer " * 2000,
                                  "<think>" * 3000, "sq " * 3000])
def test_pathological_inputs_parse_quickly(text):
    start = time.perf_counter()
    parse_completion(text)
    parse_quantity(text)
    parse_choice(text)
    parse_count(text)
    assert time.perf_counter() - start < 0.05
