"""Real SpaceVista shapes end to end on the tiny policy and a local Ray: `data convert` (full-set items
for training, bench entries for the held-out split) -> a 2-step training run over all 19 task types
-> `eval run` on the bench entries themselves -> `eval score` of its results file."""

from __future__ import annotations

import json

import pytest
from spacevista_fixtures import OFFICIAL_NAMES, write_all

from spacevista.actors.controller import run_training
from spacevista.cli import main
from spacevista.configs.loader import compose, to_train_config

pytestmark = pytest.mark.slow

SHORT = [
    "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.lora.rank=4", "model.lora.alpha=8",
    "learner.sft.steps=2", "learner.sft.batch_size=4", "learner.micro_batch_size=2",
    "rollout.prompts_per_step=4", "rollout.n=2", "rollout.max_tokens=8", "curriculum=mixed",
    "log.progress=false", "log.samples_per_step=2", "log.tensorboard=false", "log.plot=false",
    "eval_every=2", "eval_prompts_per_scale=1",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sv")
    files = write_all(root)
    # the full set twice over (its 19 items, every group) trains; the bench entries are held out
    assert main(["data", "convert", str(files["full"]), "--out", str(root / "train"), "--num-frames", "4"]) == 0
    assert main(["data", "convert", str(files["bench"]), "--out", str(root / "test"), "--num-frames", "4",
                 "--split", "test", "--data-source", "spacevista_bench"]) == 0
    return root, files


def test_convert_train_eval_run_and_score_on_the_documented_shapes(local_ray, converted, tmp_path):
    root, files = converted
    cfg = to_train_config(compose([
        *SHORT, "data=parquet", f"data.train={root / 'train'}", f"data.test={root / 'test'}",
        f"model.cache_dir={root / 'models'}", f"run_dir={tmp_path / 'run'}", "steps=2", "checkpoint_every=2"]))
    result = run_training(cfg, tmp_path / "run")
    assert result.steps == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0.0 <= r["reward/total"] <= 1.0 for r in rows)

    out = tmp_path / "eval"
    assert main(["eval", "run", "--checkpoint", str(tmp_path / "run"), "--data", str(files["bench"]),
                 "--router", "label", "--max-tokens", "6", "--batch-size", "4", "--out", str(out)]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 19 and {r["original_type"] for r in results} == set(OFFICIAL_NAMES)
    for key in ("id", "input_type", "category", "scale", "original_type", "question", "ground_truth",
                "predicted_answer", "answer_type", "num_frames_sent"):
        assert all(key in r for r in results), key
    assert {r["scale"] for r in results} == {"mm", "cm", "m", "<km"}
    assert {r["answer_type"] for r in results} == {"mc", "numerical", "text"}

    rescored = tmp_path / "rescored"
    assert main(["eval", "score", str(out / "results.jsonl"), "--out", str(rescored), "--name", "tiny"]) == 0
    official = json.loads((rescored / "results_tiny_metrics.json").read_text())
    assert official["total_count"] == 19 and set(official["per_category"]) == {
        "TinyTabletop", "Tabletop", "Indoor", "Outdoor"}
    assert set(official["per_type"]) == set(OFFICIAL_NAMES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["reading"] == "official"  # bench entries: the official scorer's reading by default
    assert summary["overall"] == pytest.approx(official["overall"])
