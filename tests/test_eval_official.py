"""The official SpaceVista-Bench scorer's reading (eval/official.py) and `eval score`'s default.

The literals below are the official scorer's own output on the fixtures: its eval/metrics/ run outside
this repository (see benchmarks/RESULTS.md, "Scorer parity"), per line and in aggregate. Where the
official scorer crashes on a line, the aggregates are its output on the file without that line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spacevista.cli import main
from spacevista.eval.official import (classify_answer_type, extract_answer, mean_relative_accuracy, read_number,
                                      score_file, score_lines)
from spacevista.eval.scoring import EvalSample, ScoredSample, read_results, result_row
from spacevista.grammar.truth import GroundTruth
from spacevista.scales import AnswerType

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
MESSY, OLDER = FIXTURES / "official_messy.jsonl", FIXTURES / "official_older.jsonl"

# line -> the official score. Lines 6 and 22 are blank; 13 (invalid JSON) and 21 (no ground_truth) the
# official scorer skips; on 18 (int prediction, mc) and 19 (null prediction, mc) it crashes: we score 0.
MESSY_SCORES = {
    1: 1.0,  # <ANSWER>3</ANSWER>: tags in any case
    2: 1.0,  # two <answer> blocks, B then C: the first counts
    3: 1.0,  # "a single chair": 'a' is 1
    4: 1.0,  # "thirty meters" = 30
    5: 0.0,  # "twenty-one": 'one' comes before 'twenty' in the word list: 1 vs 21
    7: 0.0,  # "1,200" reads 1
    8: 0.0,  # "1e3" reads 1
    9: 0.5,  # gt 0: absolute error 0.3 <= 1 - t for t = 0.50 .. 0.70
    10: 0.1,  # 15 vs 10: error 0.5 <= 1 - 0.50 only
    11: 0.8,  # 17 vs 20: error 0.15 <= 1 - 0.85 (= 0.15000000000000002)
    12: 0.6,  # 2.0 vs 2.5: error 0.2 > 1 - 0.80 (= 0.19999999999999996)
    14: 1.0,  # category "Basement": scored, counted in overall only
    15: 0.0,  # answer_type "yesno": 0
    16: 1.0,  # no original_type: scored, left out of per_type
    17: 1.0,  # predicted_answer 42 (a number) vs 40: error 0.05 <= 1 - 0.95 (= 0.050000000000000044)
    18: 0.0,  # crash: int prediction on an mc row
    19: 0.0,  # crash: null prediction on an mc row
    20: 0.0,  # null prediction on a numerical row: no number
    23: 0.6,  # Drone 400 vs 500: error 0.2, as line 12
    24: 0.0,  # "the kitchen" vs "kitchen": exact match only
    25: 0.0,  # "(d)": no leading letter
    26: 1.0,  # "b) because ..." is B
    27: 1.0,  # "E" vs E (the reader knows A-D only; the exact match still holds)
    28: 0.0,  # gt "12 mm" is not a float
    29: 0.0,  # "about 5, an estimate": 'an' is 1
    30: 0.9,  # 22 vs 20: error 0.1 <= 1 - 0.90 (= 0.10000000000000009)
    31: 0.0,  # -3 vs 3
    32: 0.0,  # empty answer vs "desk"
    33: 1.0,  # "river" vs "River": case-insensitive
    34: 0.9,  # gt 4 (a JSON number), 4.4: error 0.10000000000000009, on the edge
}
# compute_metrics on official_messy.jsonl without lines 18 and 19
OFFICIAL_MESSY_METRICS = {
    "per_category": {
        "Indoor": {"count": 9, "mc_accuracy": 1.0, "mc_count": 2, "num_MRA": 0.725, "num_count": 4,
                   "text_accuracy": 0.5, "text_count": 2, "overall": 0.6555555555555556},
        "Outdoor": {"count": 7, "mc_accuracy": 0.0, "mc_count": 1, "num_MRA": 0.4, "num_count": 5,
                    "text_accuracy": 1.0, "text_count": 1, "overall": 0.42857142857142855},
        "Tabletop": {"count": 6, "num_MRA": 0.3, "num_count": 5, "text_accuracy": 0.0, "text_count": 1,
                     "overall": 0.25},
        "TinyTabletop": {"count": 4, "mc_accuracy": 1.0, "mc_count": 1, "num_MRA": 0.4666666666666666,
                         "num_count": 3, "overall": 0.6}},
    "per_type": {"camera_height": {"score": 0.6, "count": 1}, "landmark": {"score": 1.0, "count": 1},
                 "object_count": {"score": 0.5, "count": 4},
                 "object_distance": {"score": 0.4166666666666667, "count": 6},
                 "object_size": {"score": 0.4714285714285714, "count": 7},
                 "relative_direction": {"score": 0.8, "count": 5}, "scene_type": {"score": 0.0, "count": 2},
                 "yes_no": {"score": 0.0, "count": 1}},
    "overall": 0.5142857142857143,
    "total_count": 28,
}
# line -> the official accuracy / MRA; 6 (no ground_truth) and 11 (invalid JSON) skipped; 4 (unknown
# question_type) and 9 (null prediction, choice type) crash
OLDER_SCORES = {1: 1.0, 2: 1.0, 3: 0.6, 4: 0.0, 5: 1.0, 8: 0.0, 9: 0.0, 10: 0.0, 12: 0.0, 13: 1.0, 14: 0.9}
OFFICIAL_OLDER_METRICS = {"multiple choice_accuracy": 0.6666666666666666, "regression_MRA": 0.5,
                          "overall_accuracy": 0.6111111111111112}  # calculate_json without lines 4 and 9


def without_lines(path: Path, drop: set[int], tmp_path: Path) -> Path:
    kept = [text for n, text in enumerate(path.read_text().split("\n"), start=1) if n not in drop]
    out = tmp_path / path.name
    out.write_text("\n".join(kept))
    return out


def write_lines(tmp_path: Path, *lines: str | bytes) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def bench_row(**fields) -> str:
    return json.dumps({"category": "Indoor", "original_type": "t", "answer_type": "numerical", "ground_truth": "10",
                       "predicted_answer": "<answer>10</answer>", **fields})


# ---- the per-row reading -------------------------------------------------------------------------
def test_each_messy_row_scores_as_the_official_scorer_scores_it():
    result = score_file(MESSY)
    assert result.layout == "bench"
    assert {r.line: r.score for r in result.rows} == MESSY_SCORES
    assert [(s.line, s.crashes) for s in result.skipped] == [(13, False), (21, False)]
    assert "missing field 'ground_truth'" in result.skipped[1].error


def test_rows_the_official_scorer_crashes_on_score_0_with_a_note():
    notes = {r.line: r.note for r in score_file(MESSY).rows if r.note}
    assert list(notes) == [18, 19]
    assert "AttributeError: 'int' object has no attribute 'strip'" in notes[18]
    assert "'NoneType' object has no attribute 'strip'" in notes[19]


def test_the_first_answer_block_counts_whatever_its_case():
    assert extract_answer("<Answer> B </ANSWER> then <answer>C</answer>") == "B"
    assert extract_answer("no tags") == "no tags" and extract_answer(None) is None and extract_answer(42) == 42


def test_number_words_are_found_in_the_word_list_order_before_digits():
    assert read_number("a 5 m gap") == "1"  # 'a' is a number word, found before the digits
    assert read_number("three or two") == "2"  # 'two' precedes 'three' in the list
    assert read_number("1,200") == "1" and read_number("1e3") == "1" and read_number("-2.5 m") == "-2.5"
    assert read_number("someone") == "None" and read_number(None) == "None"


def test_mra_uses_the_absolute_error_for_a_zero_truth_and_the_official_float_edges():
    assert mean_relative_accuracy(0.3, 0.0) == 0.5
    assert mean_relative_accuracy(2.2, 2.0) == 0.9  # error 0.10000000000000009: the t = 0.90 edge holds
    assert mean_relative_accuracy(2.0, 2.5) == 0.6  # error 0.2 just misses t = 0.80
    assert mean_relative_accuracy(42.0, 40.0) == 1.0


def test_answer_type_follows_the_ground_truth():
    assert [classify_answer_type(g) for g in ("A", " E ", "F", "3", 2.5, "1e3", "12 mm", "nan")] == [
        "mc", "mc", "text", "numerical", "numerical", "numerical", "text", "numerical"]


# ---- aggregates ----------------------------------------------------------------------------------
def test_without_its_crash_lines_the_messy_file_gives_the_official_metrics(tmp_path):
    assert score_file(without_lines(MESSY, {18, 19}, tmp_path)).metrics == OFFICIAL_MESSY_METRICS


def test_crashed_rows_count_as_0_in_our_metrics():
    metrics = score_file(MESSY).metrics
    assert metrics["total_count"] == 30 and metrics["overall"] == pytest.approx(0.5142857142857143 * 28 / 30)
    assert metrics["per_category"]["Indoor"]["mc_count"] == 3  # line 18 is an Indoor mc row


def test_older_layout_rows_and_metrics_are_the_official_ones(tmp_path):
    result = score_file(OLDER)
    assert result.layout == "older"
    assert {r.line: r.score for r in result.rows} == OLDER_SCORES
    assert [r.line for r in result.rows if r.note] == [4, 9] and [s.line for s in result.skipped] == [6, 11]
    assert score_file(without_lines(OLDER, {4, 9}, tmp_path)).metrics == OFFICIAL_OLDER_METRICS
    # the unknown type's 0 counts in overall_accuracy only; the null choice's 0 is a choice accuracy
    assert score_file(OLDER).metrics == {"multiple choice_accuracy": 0.5, "regression_MRA": 0.5,
                                         "overall_accuracy": 0.5}


def test_per_type_groups_as_pandas_does():
    lines = [(1, json.loads(bench_row(original_type=5))), (2, json.loads(bench_row(original_type=None))),
             (3, json.loads(bench_row(original_type=2.5))), (4, json.loads(bench_row()))]
    del lines[3][1]["original_type"]
    # integers beside a missing value become floats; None and missing are left out; numbers sorted
    assert list(score_lines(lines).metrics["per_type"]) == ["2.5", "5.0"]


def test_files_the_official_aggregates_crash_on_are_noted():
    no_category = [(1, {k: v for k, v in json.loads(bench_row()).items() if k != "category"})]
    no_type = [(1, {k: v for k, v in json.loads(bench_row()).items() if k != "original_type"})]
    mixed = [(1, json.loads(bench_row(original_type="t"))), (2, json.loads(bench_row(original_type=3)))]
    assert "KeyError 'category'" in score_lines(no_category).notes[0]
    assert "KeyError 'original_type'" in score_lines(no_type).notes[0]
    assert "mixes strings and numbers" in score_lines(mixed).notes[0]


def test_hostile_lines_are_named_and_never_crash(tmp_path):
    path = write_lines(tmp_path, bench_row(), b'{"predicted_answer": "\xff\xfe"}', "[" * 100_000 + "]" * 100_000,
                       bench_row(ground_truth=float("nan")), bench_row(predicted_answer=float("inf")),
                       "[1, 2]", "1" * 5000, bench_row(answer_type="mc", predicted_answer=[1]))
    result = score_file(path)
    assert {r.line: r.score for r in result.rows} == {1: 1.0, 4: 0.0, 5: 0.0, 6: 0.0, 8: 0.0}
    assert [(s.line, s.crashes) for s in result.skipped] == [(2, True), (3, True), (7, True)]
    assert "invalid UTF-8" in result.skipped[0].error and "RecursionError" in result.skipped[1].error
    assert [r.line for r in result.rows if r.note] == [6, 8]  # a JSON list; a list prediction on an mc row


# ---- `eval score` --------------------------------------------------------------------------------
def test_eval_score_writes_the_official_metrics_and_a_summary_that_agrees(tmp_path):
    source = without_lines(MESSY, {18, 19}, tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "score", str(source), "--out", str(out), "--name", "messy"]) == 0
    assert json.loads((out / "results_messy_metrics.json").read_text()) == OFFICIAL_MESSY_METRICS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reading"] == "official" and summary["layout"] == "bench"
    assert (summary["overall"], summary["total_count"]) == (0.5142857142857143, 28)
    assert summary["per_type"] == OFFICIAL_MESSY_METRICS["per_type"]
    for category, official in OFFICIAL_MESSY_METRICS["per_category"].items():
        assert {k: summary["per_category"][category][k] for k in official} == official
    assert summary["per_category"]["Drone"]["num_MRA"] == 0.6  # ours on top: Drone is not an official category


def test_eval_score_names_each_problem_line_and_lists_reading_differences(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "score", str(MESSY), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{MESSY}:13: not scored: invalid JSON" in captured.err
    assert f"{MESSY}:18: scored 0: the official scorer would crash here" in captured.err
    assert "scored differently by the official and lenient readings" in captured.out
    differences = {d["line"]: d for d in map(json.loads, (out / "reading_differences.jsonl").read_text().splitlines())}
    assert differences[2]["official"] == {"score": 1.0, "answer": "B"}
    assert (differences[2]["lenient"]["score"], differences[2]["lenient"]["answer"]) == (0.0, "C")
    assert differences[14]["lenient"] == {"not_scored": "unknown category 'Basement'"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reading_differences"] == len(differences)
    assert [n["line"] for n in summary["official_notes"]] == [18, 19]


def test_eval_score_lenient_reading_is_an_option(tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "score", str(MESSY), "--out", str(out), "--name", "messy", "--reading", "lenient"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["line"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert summary["reading"] == "lenient" and 14 not in rows  # the lenient reading drops the Basement row
    assert (rows[2]["score"], rows[2]["official_score"], rows[2]["lenient_score"]) == (0.0, 1.0, 0.0)
    assert (out / "results_messy_metrics.json").is_file()  # the official metrics, whatever the reading


def test_eval_score_reads_the_older_layout(tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "score", str(without_lines(OLDER, {4, 9}, tmp_path)), "--out", str(out)]) == 0
    assert json.loads((out / "results_official_older_metrics.json").read_text()) == OFFICIAL_OLDER_METRICS
    assert json.loads((out / "summary.json").read_text())["layout"] == "older"


def test_a_file_with_no_scorable_row_exits_2(tmp_path, capsys):
    path = write_lines(tmp_path, "{bad", json.dumps({"predicted_answer": "A"}))
    assert main(["eval", "score", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "no scorable row" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_outputs_are_strict_json_whatever_the_input(tmp_path):
    path = write_lines(tmp_path, bench_row(ground_truth=float("nan"), question=float("-inf")), b"\xff")
    out = tmp_path / "out"
    assert main(["eval", "score", str(path), "--out", str(out)]) == 0
    for name in ("results.jsonl", "summary.json", "reading_differences.jsonl", "results_rows_metrics.json"):
        text = (out / name).read_text()
        json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]
        assert "NaN" not in text and "Infinity" not in text


# ---- `eval run` rows -----------------------------------------------------------------------------
def test_result_rows_carry_the_official_results_layout():
    truth = GroundTruth("indoor", "object_size", AnswerType.NUMERIC, 3.2, "m")
    sample = EvalSample(id="q1", scale="indoor", task="object_size", truth=truth, ground_truth="3.2 m",
                        prediction="<answer>3.2 m</answer>", question="How tall?", num_frames=8,
                        original_type="OBJECT_SIZE")
    row = result_row(ScoredSample(sample, "3.2 m", 1.0, "ok"))
    assert list(row)[:10] == ["id", "input_type", "category", "scale", "original_type", "question", "ground_truth",
                              "predicted_answer", "answer_type", "num_frames_sent"]
    assert (row["input_type"], row["category"], row["original_type"], row["num_frames_sent"]) == (
        "image_text", "Indoor", "OBJECT_SIZE", 8)
    assert row["answer_type"] == "text" and row["truth_type"] == "numerical"  # "3.2 m" is not a float
    # read back, the official reading matches the text exactly; the lenient one reads the quantity
    readings = read_results([(1, row)])
    assert readings.rows[0].score == 1.0 and readings.differences == []
