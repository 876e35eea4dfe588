"""Offline scoring of SpaceVista-Bench results files: hand-computed scores, summary layout, reports.

`eval score` reads the official way by default (tests/test_eval_official.py); most tests here pin the
lenient reading (`--reading lenient`: our parsers), whose scores are computed by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spacevista.cli import main
from spacevista.eval.scoring import read_predictions, sample_from_row, score_sample, scored_row
from spacevista.eval.summary import summarize

FIXTURE = Path(__file__).parent / "fixtures" / "eval" / "bench_predictions.jsonl"

# Expected per-sample scores of the fixture under the lenient reading, by hand. MRA = the fraction of the 10 thresholds
# t in {0.50, 0.55, ..., 0.95} with |pred - gt| / |gt| <= 1 - t.
EXPECTED = {
    "1": 1.0,  # mc "A" vs A
    "2": 0.9,  # 1.3 cm = 13 mm vs 12 mm: error 1/12 = 0.083 <= 1 - t for t = 0.50..0.90 (9 of 10)
    "3": 0.6,  # bare gt 40: "50 cm" is read as 50 (unit ignored): error 0.25, t = 0.50..0.75 (6 of 10)
    "4": 0.0,  # no <answer> tags: the whole text, "The answer is C", gives C vs B
    "5": 1.0,  # 320 cm = 3.2 m: error 0
    "6": 1.0,  # "the kitchen." normalises to "kitchen" = "Kitchen"
    # line 7 is malformed: no ground_truth
    "8": 0.1,  # bare gt 2 (a JSON number): "three" = 3, error 0.5, t = 0.50 only (1 of 10)
    "9": 1.0,  # "(d)" is D
    "10": 0.0,  # 0.2 km = 200 m vs 100 m: error 1.0
    "11": 0.9,  # "about 45" is bare: 45 m vs 50 m, error 0.1, t = 0.50..0.90 (9 of 10)
    "12": 0.7,  # 400 m vs 500 m: error 0.2, t = 0.50..0.80 (7 of 10)
    "13": 0.0,  # "lake" vs "river"
}
# The official reading of the same file (the official scorer's own output, see test_eval_official.py):
# no unit conversion, exact text and "(d)" unread, so lines 2, 5, 6, 9, 10, 11 and 12 score lower.
OFFICIAL = {"1": 1.0, "2": 0.0, "3": 0.6, "4": 0.0, "5": 0.0, "6": 0.0, "8": 0.1, "9": 0.0, "10": 0.0, "11": 0.0,
            "12": 0.0, "13": 0.0}


def rounded(value):
    """Floats rounded to 9 places, all the way down (pytest.approx does not nest)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 9) if isinstance(value, float) else value


@pytest.fixture(scope="module")
def scored_fixture(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scored")
    assert main(["eval", "score", str(FIXTURE), "--out", str(out), "--reading", "lenient"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_each_fixture_sample_scores_as_computed_by_hand_under_the_lenient_reading():
    samples, _ = read_predictions(FIXTURE)
    assert {s.id: score_sample(s).score for s in samples} == pytest.approx(EXPECTED)


def test_by_default_the_summary_follows_the_official_reading(tmp_path):
    assert main(["eval", "score", str(FIXTURE), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {str(r["id"]): r["score"] for r in rows} == OFFICIAL and summary["reading"] == "official"
    assert summary["overall"] == 0.1416666666666667 and summary["total_count"] == 12
    assert summary["per_category"]["Tabletop"]["overall"] == 0.3 and summary["per_category"]["Drone"]["count"] == 2
    assert summary["per_type"]["object_distance"] == {"score": 0.19999999999999998, "count": 3}


def test_summary_numbers_match_the_hand_computation(scored_fixture):
    _, summary = scored_fixture
    approx = pytest.approx
    # overall: (1 + .9 + .6 + 0 + 1 + 1 + .1 + 1 + 0 + .9 + .7 + 0) / 12 = 7.2 / 12
    assert summary["overall"] == approx(0.6) and summary["total_count"] == 12
    cats = summary["per_category"]
    assert list(cats) == ["TinyTabletop", "Tabletop", "Indoor", "Outdoor", "Drone"]
    # TinyTabletop: mc 1.0; numeric 0.9; overall (1 + .9) / 2
    assert rounded(cats["TinyTabletop"]) == {
        "overall": 0.95, "mc_accuracy": 1.0, "num_MRA": 0.9, "text_accuracy": None, "count_accuracy": None,
        "count": 2, "mc_count": 1, "num_count": 1, "text_count": 0,
        "n_per_answer_type": {"mc": 1, "numerical": 1, "text": 0, "count": 0}}
    # Tabletop: mc 0; numeric 0.6; overall (0 + .6) / 2
    tabletop = cats["Tabletop"]
    assert (tabletop["overall"], tabletop["mc_accuracy"], tabletop["num_MRA"]) == approx((0.3, 0.0, 0.6))
    # Indoor: numeric (1 + .1) / 2 = .55; text 1; overall (1 + 1 + .1) / 3 = .7; no mc -> null
    assert cats["Indoor"]["overall"] == approx(0.7) and cats["Indoor"]["num_MRA"] == approx(0.55)
    assert cats["Indoor"]["text_accuracy"] == 1.0 and cats["Indoor"]["mc_accuracy"] is None
    # Outdoor: mc 1; numeric (0 + .9) / 2 = .45; overall (1 + 0 + .9) / 3 = .6333
    assert (cats["Outdoor"]["overall"], cats["Outdoor"]["num_MRA"]) == approx((1.9 / 3, 0.45))
    # Drone: numeric .7; text 0; overall .35
    drone = cats["Drone"]
    assert (drone["overall"], drone["num_MRA"], drone["text_accuracy"]) == approx((0.35, 0.7, 0.0))
    # per task type: relative_direction (1 + 0 + 1) / 3; object_size (.9 + 1) / 2; object_distance (.6 + 0 + .9) / 3
    assert rounded(summary["per_type"]) == rounded({
        "relative_direction": {"score": 2 / 3, "count": 3}, "object_size": {"score": 0.95, "count": 2},
        "object_distance": {"score": 0.5, "count": 3}, "scene_type": {"score": 1.0, "count": 1},
        "object_count": {"score": 0.1, "count": 1}, "camera_height": {"score": 0.7, "count": 1},
        "landmark": {"score": 0.0, "count": 1}})
    assert summary["router"] is None  # the public layout names no expert


def test_the_malformed_line_is_counted_and_reported_by_number(scored_fixture):
    _, summary = scored_fixture
    assert summary["malformed"] == {"count": 1, "lines": [{"line": 7, "error": "missing field 'ground_truth'"}]}


def test_every_kind_of_bad_line_is_reported_and_blank_lines_are_not(tmp_path):
    good = {"predicted_answer": "<answer>A</answer>", "ground_truth": "A", "answer_type": "mc",
            "category": "Indoor", "original_type": "relative_direction"}
    lines = ["{not json", json.dumps([1, 2]), "", json.dumps({**good, "category": "Basement"}),
             json.dumps({**good, "answer_type": "yesno"}), json.dumps({**good, "ground_truth": "left"}),
             json.dumps({**good, "predicted_answer": 3}), json.dumps({**good, "answer_type": "numerical",
                                                                       "ground_truth": "many"}),
             json.dumps({**good, "predicted_answer": None}), json.dumps(good)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    samples, malformed = read_predictions(path)
    assert [m.line for m in malformed] == [1, 2, 4, 5, 6, 7, 8]
    assert "invalid JSON" in malformed[0].error and "unknown category 'Basement'" in malformed[2].error
    assert "not a choice letter" in malformed[4].error
    assert [score_sample(s).score for s in samples] == [0.0, 1.0]  # a null prediction is an answer that scores 0


def test_output_files_and_results_rows(scored_fixture):
    out, _ = scored_fixture
    assert {p.name for p in out.iterdir()} == {"results.jsonl", "summary.json", "leaderboard.md", "per_scale.png",
                                               "reading_differences.jsonl", "results_bench_predictions_metrics.json"}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [str(r["id"]) for r in rows] == list(EXPECTED)
    # the input row as it was, then both readings' scores (the lenient one chosen here)
    assert rows[1] == {"id": 2, "category": "TinyTabletop", "scale": "mm", "original_type": "object_size",
                       "answer_type": "numerical", "ground_truth": "12 mm",
                       "predicted_answer": "<answer>1.3 cm</answer>", "line": 2, "reading": "lenient",
                       "score": pytest.approx(0.9), "parsed_answer": "1.3 cm", "reason": "13 vs 12 mm",
                       "official_score": 0.0, "lenient_score": pytest.approx(0.9)}
    assert (out / "per_scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_file_scores_back_to_the_same_summary(scored_fixture, tmp_path):
    out, summary = scored_fixture
    assert main(["eval", "score", str(out / "results.jsonl"), "--out", str(tmp_path), "--reading", "lenient"]) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["per_category"] == summary["per_category"] and again["per_type"] == summary["per_type"]


def test_leaderboard_is_laid_out_like_the_paper(scored_fixture):
    out, _ = scored_fixture
    text = (out / "leaderboard.md").read_text()
    assert "| Model | Overall | Tiny Tabletop | Tabletop | Indoor | Outdoor | Drone |" in text
    assert "| bench_predictions | 60.0 | 95.0 | 30.0 | 70.0 | 63.3 | 35.0 |" in text
    assert "| bench_predictions | Numeric MRA | 90.0 | 60.0 | 55.0 | 45.0 | 70.0 |" in text
    assert "| relative_direction | 66.7 (3) |" in text


def test_router_accuracy_per_scale_counts_samples_routed_to_their_own_scale():
    rows = [("Indoor", "indoor"), ("Indoor", "outdoor"), ("Outdoor", "outdoor"), ("Tabletop", None)]
    samples = [sample_from_row({"predicted_answer": "A", "ground_truth": "A", "answer_type": "mc", "category": c,
                                "original_type": "closer", "routed_expert": e}, i) for i, (c, e) in enumerate(rows)]
    router = summarize([scored_row(score_sample(s)) for s in samples])["router"]
    # 3 routed samples, 2 to their own scale; Indoor 1 of 2, Outdoor 1 of 1; the unrouted one is not counted
    assert router == {"accuracy": pytest.approx(2 / 3), "count": 3,
                      "per_category": {"Indoor": 0.5, "Outdoor": 1.0}}


def test_compare_puts_runs_side_by_side(scored_fixture, tmp_path):
    out, _ = scored_fixture
    worse = tmp_path / "worse.jsonl"  # every prediction empty: every score 0
    worse.write_text("".join(json.dumps({**json.loads(line), "predicted_answer": ""}) + "\n"
                             for line in FIXTURE.read_text().splitlines()))
    assert main(["eval", "score", str(worse), "--out", str(tmp_path / "worse")]) == 0
    md = tmp_path / "compare.md"
    assert main(["eval", "compare", str(out), str(tmp_path / "worse"), "--out", str(md)]) == 0
    text = md.read_text()
    assert f"| {out.name} | 60.0 | 95.0 | 30.0 | 70.0 | 63.3 | 35.0 |" in text
    assert "| worse | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 |" in text
    assert "| relative_direction | 66.7 (3) | 0.0 (3) |" in text


def test_compare_names_a_directory_without_summary(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err
