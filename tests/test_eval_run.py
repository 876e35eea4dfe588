"""`eval run` end to end on the tiny policy: checkpoints as the trainer writes them, label / learned
routing and the base policy, over a few held-out synthetic records."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_policy_samples
from rollout_helpers import LORA, random_experts

from spacevista.cluster import run_storage
from spacevista.cli import main
from spacevista.datasets.synthetic.synth import synthesize
from spacevista.eval.policy import EvalError, load_policy_from_checkpoint
from spacevista.eval.run import RunOptions, evaluate, read_eval_records
from spacevista.learner.batch import collate
from spacevista.policies.experts import lora_config, write_expert_dir
from spacevista.learner.core import LearnerCore
from spacevista.scales import SCALES, canonical_scale

FAST = ["--max-tokens", "6", "--limit", "4", "--batch-size", "2"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """A synthetic dataset root (train/, test/, manifest.json) with 5 held-out records."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, n=10, seed=3, frames=2, size=56, test_fraction=0.5, overwrite=True)
    return root


def _learner(model_path: Path) -> LearnerCore:
    torch.manual_seed(0)
    return LearnerCore(model_path, SCALES, micro_batch_size=8)


def _save(learner: LearnerCore, run_dir: Path, meta: dict) -> Path:
    """As the controller does: stage, let the learner write, commit atomically."""
    tmp = run_storage.staging_dir(run_dir, learner.step)
    learner.save_checkpoint(tmp)
    return run_storage.commit(tmp, learner.step, meta)


@pytest.fixture(scope="module")
def trained(tiny_policy_dir, tmp_path_factory) -> tuple[LearnerCore, Path]:
    """One RL step (experts and router move), checkpointed with the base model's path recorded."""
    learner = _learner(tiny_policy_dir)
    samples = make_policy_samples(5, list(SCALES), seed=4, with_rollout_logprobs=True)
    learner.rl_step(collate(learner.processor, samples))
    return learner, _save(learner, tmp_path_factory.mktemp("run"), {"model_path": str(tiny_policy_dir)})


def test_eval_reads_the_synthetic_held_out_split(synth_root):
    records = read_eval_records(synth_root)
    assert len(records) == 5 and {r.split for r in records} == {"test"}
    assert [r.id for r in read_eval_records(synth_root, limit=2)] == [r.id for r in records[:2]]


def test_checkpoint_gives_the_trained_experts_router_and_base_model(trained, tiny_policy_dir):
    learner, checkpoint = trained
    policy = load_policy_from_checkpoint(checkpoint.parent.parent)  # a run directory: its latest checkpoint
    assert policy.checkpoint == checkpoint and policy.model_path == tiny_policy_dir
    assert policy.experts == list(SCALES) and policy.lora.rank == 16
    want = learner.expert_state_dicts()
    assert all(torch.equal(policy.weights[e][k], want[e][k]) for e in SCALES for k in want[e])
    features = torch.randn(6, learner.router.classifier[0].normalized_shape[0])
    assert policy.router.predict(features) == learner.router.predict(features)


def test_a_checkpoint_that_names_no_base_model_asks_for_one(trained, tmp_path):
    _, checkpoint = trained
    bare = tmp_path / "step_1"
    shutil.copytree(checkpoint, bare)
    (bare / run_storage.COMPLETE_MARKER).write_text(json.dumps({"step": 1}))
    with pytest.raises(EvalError, match="pass --model PATH"):
        load_policy_from_checkpoint(bare)


def test_the_base_model_is_the_model_flag_then_the_checkpoint_base_dir_then_the_recorded_path(
        trained, tiny_policy_dir, tmp_path):
    _, checkpoint = trained
    sft = tmp_path / "step_1"
    shutil.copytree(checkpoint, sft)
    shutil.copytree(tiny_policy_dir, sft / "base")  # as full-parameter SFT leaves it
    other = shutil.copytree(tiny_policy_dir, tmp_path / "other")
    assert load_policy_from_checkpoint(checkpoint).model_path == tiny_policy_dir
    assert load_policy_from_checkpoint(sft).model_path == sft / "base"
    assert load_policy_from_checkpoint(sft, other).model_path == other


def _run(tmp_path: Path, *args: str) -> tuple[list[dict], dict]:
    out = tmp_path / "out"
    assert main(["eval", "run", *args, "--out", str(out), *FAST]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def test_label_routing_sends_each_record_to_its_scale_expert(trained, synth_root, tmp_path):
    _, checkpoint = trained
    rows, summary = _run(tmp_path, "--checkpoint", str(checkpoint), "--data", str(synth_root), "--router", "label")
    assert len(rows) == 4 and all(r["routed_expert"] == canonical_scale(r["category"]) for r in rows)
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert summary["router"]["accuracy"] == 1.0 and summary["total_count"] == 4
    assert summary["run"]["router"] == "label" and summary["run"]["checkpoint"] == str(checkpoint)
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"leaderboard.md", "per_scale.png"}
    # synthetic answers carry units, so eval run scored them in our (lenient) reading; the results file is
    # itself a bench results file: scoring it again in the same reading gives the same summary
    assert summary["run"]["reading"] == "lenient"
    assert main(["eval", "score", str(tmp_path / "out" / "results.jsonl"), "--out", str(tmp_path / "again"),
                 "--reading", "lenient"]) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert (again["overall"], again["per_category"], again["router"]) == (summary["overall"], summary["per_category"],
                                                                          summary["router"])


def test_learned_routing_uses_the_checkpoint_router(trained, synth_root, tmp_path):
    _, checkpoint = trained
    rows, summary = _run(tmp_path, "--checkpoint", str(checkpoint), "--data", str(synth_root))
    assert summary["run"]["router"] == "learned" and all(r["routed_expert"] in SCALES for r in rows)
    hits = [r["routed_expert"] == canonical_scale(r["category"]) for r in rows]
    assert summary["router"]["accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_learned_routing_without_a_trained_router_is_an_error(tiny_policy_dir, synth_root, tmp_path, capsys):
    checkpoint = _save(_learner(tiny_policy_dir), tmp_path / "run", {"model_path": str(tiny_policy_dir)})
    assert main(["eval", "run", "--checkpoint", str(checkpoint), "--data", str(synth_root), *FAST]) == 2
    assert "--router label" in capsys.readouterr().err


def test_base_policy_runs_every_prompt_through_the_base_model(tiny_policy_dir, synth_root, tmp_path):
    rows, summary = _run(tmp_path, "--checkpoint", "none", "--model", str(tiny_policy_dir), "--data", str(synth_root))
    assert len(rows) == 4 and all(r["routed_expert"] is None for r in rows)
    assert summary["router"] is None and summary["name"] == "base" and summary["run"]["experts"] == []


@pytest.fixture(scope="module")
def random_checkpoint(tiny_policy_dir, tmp_path_factory) -> Path:
    """Experts with non-zero LoRA B (rank 8, not the default 16) as peft adapter directories; no learner.pt."""
    checkpoint = tmp_path_factory.mktemp("random") / "step_3"
    for expert, state in random_experts(tiny_policy_dir, seed=5).items():
        write_expert_dir(checkpoint / expert, lora_config(LORA), state)
    return checkpoint


def test_the_checkpoint_experts_are_what_generates(random_checkpoint, tiny_policy_dir, synth_root, tmp_path):
    routed, _ = _run(tmp_path / "routed", "--checkpoint", str(random_checkpoint), "--model", str(tiny_policy_dir),
                     "--data", str(synth_root), "--router", "label")
    base, _ = _run(tmp_path / "base", "--checkpoint", "none", "--model", str(tiny_policy_dir),
                   "--data", str(synth_root))
    assert [r["id"] for r in routed] == [r["id"] for r in base]
    assert any(a["predicted_answer"] != b["predicted_answer"] for a, b in zip(routed, base))


@pytest.mark.slow
def test_ray_rollout_workers_answer_as_the_in_process_engine(trained, synth_root, ray_temp_dir):
    import ray

    _, checkpoint = trained
    policy = load_policy_from_checkpoint(checkpoint)
    records = read_eval_records(synth_root)
    options = RunOptions(routing="learned", max_tokens=6, batch_size=5)
    alone, _ = evaluate(policy, records, options)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=str(ray_temp_dir), log_to_driver=False)
    try:
        parallel, _ = evaluate(policy, records, dataclasses.replace(options, workers=2))
    finally:
        ray.shutdown()
    assert parallel == alone


@pytest.mark.vllm
def test_vllm_engine_answers_as_the_hf_engine(random_checkpoint, tiny_policy_dir, synth_root, tmp_path):
    common = ["--checkpoint", str(random_checkpoint), "--model", str(tiny_policy_dir), "--data", str(synth_root),
              "--router", "label"]
    hf, _ = _run(tmp_path / "hf", *common)
    vllm, summary = _run(tmp_path / "vllm", *common, "--engine", "vllm")
    assert summary["run"]["engine"] == "vllm"
    assert [r["predicted_answer"] for r in vllm] == [r["predicted_answer"] for r in hf]
