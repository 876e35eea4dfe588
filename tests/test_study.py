"""`spacevista study`: the grid, the statistics, and a tiny study end to end whose report's numbers
are checked against the per-run eval files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from spacevista.study.presets import PRESETS, Study, Variant
from spacevista.study.report import analyse, markdown, mean_se, paired, scores
from spacevista.study.runner import StudyOptions, plan_trials


def summary(overall: float, indoor: float) -> dict:
    return {"overall": overall, "per_category": {"Indoor": {"overall": indoor}, "Outdoor": {"overall": None}}}


def test_every_preset_names_its_baseline():
    for study in PRESETS.values():
        assert study.baseline in {v.name for v in study.variants}


def test_variants_sharing_a_training_share_one_run_per_seed(tmp_path):
    trials = plan_trials(PRESETS["rl"], StudyOptions(seeds=(0, 1), overrides=("steps=2",)), tmp_path)
    assert [(t.seed, t.evals) for t in trials] == [(0, {"sft": "sft", "sft_rl": "learned"}),
                                                   (1, {"sft": "sft", "sft_rl": "learned"})]
    experts = plan_trials(PRESETS["experts"], StudyOptions(seeds=(0,)), tmp_path)
    assert len({t.run_dir for t in experts}) == 3


def test_mean_and_standard_error_over_seeds():
    mean, se = mean_se([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and se == pytest.approx(np.std([0.2, 0.4, 0.6], ddof=1) / math.sqrt(3))


def test_paired_difference_has_a_t_interval():
    got = paired([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    diff = np.array([0.1, 0.2, 0.0])
    half = stats.t.ppf(0.975, 2) * diff.std(ddof=1) / math.sqrt(3)
    assert got["mean"] == pytest.approx(0.1)
    assert (got["low"], got["high"]) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert got["p"] == pytest.approx(stats.ttest_rel([0.5, 0.7, 0.6], [0.4, 0.5, 0.6]).pvalue)


def test_lenient_reading_averages_the_rows_per_category():
    rows = [{"category": "Indoor", "lenient_score": 1.0}, {"category": "Indoor", "lenient_score": 0.0},
            {"category": "Drone", "lenient_score": 0.5}]
    assert scores({"overall": 0.0, "rows": rows}, "lenient") == {"Overall": 0.5, "Indoor": 0.5, "Drone": 0.5}
    assert scores(summary(0.1, 0.2), "summary") == {"Overall": 0.1, "Indoor": 0.2}


def test_analysis_pairs_by_seed_and_skips_empty_categories():
    study = Study("s", "q?", (Variant("a"), Variant("b")), baseline="a")
    result = analyse(study, {"a": {0: summary(0.1, 0.2), 1: summary(0.3, 0.2)},
                             "b": {0: summary(0.2, 0.4), 1: summary(0.5, 0.2), 2: summary(0.9, 0.9)}})
    assert result["metrics"] == ["Overall", "Indoor"]
    assert result["variants"]["b"]["Overall"]["n"] == 3
    assert result["differences"]["b"]["Overall"]["seeds"] == [0, 1]
    assert result["differences"]["b"]["Overall"]["mean"] == pytest.approx(0.15)
    text = markdown(result, ["spacevista study --preset s"], [0, 1, 2])
    assert "| b | 3 |" in text and "spacevista study --preset s" in text


SHORT = [
    "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.lora.rank=4", "model.lora.alpha=8",
    "data.synth.n=60", "data.synth.size=56", "data.synth.test_fraction=0.1", "learner.sft.batch_size=4",
    "learner.micro_batch_size=2", "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_tokens=12",
    "curriculum=mixed", "log.samples_per_step=0", "log.tensorboard=false", "log.plot=false", "eval_every=0",
]


@pytest.mark.slow
def test_a_tiny_study_end_to_end_reports_the_runs_eval_numbers(tmp_path):
    """The router study (label vs learned at eval: one training per seed) on the paper's 4-expert layout."""
    from spacevista.cli import main

    caches = [f"data.synth.cache_dir={tmp_path / 'data'}", f"model.cache_dir={tmp_path / 'models'}"]
    paper4 = ["model.experts=[tiny_tabletop,tabletop,indoor,outdoor]", "++model.expert_of_scale={drone:outdoor}"]
    out = tmp_path / "study"
    code = main(["study", "--preset", "router", "--seeds", "0", "1", "--budget", "2", "--sft-steps", "2",
                 "--out", str(out), "--eval-arg=--max-tokens=12", *SHORT, *caches, *paper4])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.png").stat().st_size > 0 and "Reproduce" in (out / "report.md").read_text()
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2  # one training per seed, evaluated twice
    for variant in ("label", "learned"):  # the default reading: the mean of each run's rows' lenient scores
        values = [np.mean([json.loads(line)["lenient_score"] for line in
                           (run / "eval" / variant / "results.jsonl").read_text().splitlines()]) for run in runs]
        cell = report["variants"][variant]["Overall"]
        assert cell["mean"] == pytest.approx(np.mean(values))
        assert cell["se"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(2))
        assert json.loads((runs[0] / "eval" / variant / "summary.json").read_text())["total_count"] == 6  # full split
    label_rows = [json.loads(line) for line in (runs[0] / "eval" / "label" / "results.jsonl").read_text().splitlines()]
    assert label_rows and all(r["routed_expert"] != "drone" for r in label_rows)
    diff = report["differences"]["learned"]["Overall"]
    assert diff["seeds"] == [0, 1]
    assert Path(out / "report.md").read_text().count("spacevista eval run") == 4


def test_the_dense_study_trains_the_branch_against_the_plain_policy(tmp_path):
    trials = plan_trials(PRESETS["dense"], StudyOptions(seeds=(0,)), tmp_path)
    by_variant = {name: t for t in trials for name in t.evals}
    assert set(by_variant) == {"no_dense", "dense"} and len(trials) == 2
    assert "model.dense.enabled=true" in by_variant["dense"].overrides
    assert "model.dense.enabled=true" not in by_variant["no_dense"].overrides
