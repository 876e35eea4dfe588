"""`eval run` with the dense branch: a checkpoint holding `dense_fusion.safetensors` (written by LearnerCore
with the branch on) is evaluated with its fusion, the branch rebuilt from the config the file records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from spacevista.cluster import run_storage
from spacevista.cli import main
from spacevista.configs.dense import DenseConfig
from spacevista.datasets.synthetic.synth import synthesize
from spacevista.eval.policy import EvalError, load_policy_from_checkpoint
from spacevista.eval.run import RunOptions, evaluate, read_eval_records
from spacevista.policies.dense.fusion import FUSION_FILE, load_fusion, save_fusion
from spacevista.learner.core import LearnerCore
from spacevista.scales import SCALES

FAST = ["--max-tokens", "8", "--limit", "4", "--batch-size", "2", "--router", "label"]
GATE = 3.0  # tanh(3) = 0.995: the dense attention enters the visual tokens almost fully


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, n=8, seed=3, frames=2, size=56, test_fraction=0.5, overwrite=True)
    return root


@pytest.fixture(scope="module")
def dense_cfg(tmp_path_factory) -> DenseConfig:
    return DenseConfig(enabled=True, cache_dir=str(tmp_path_factory.mktemp("dense_encoder")))


@pytest.fixture(scope="module")
def checkpoints(tiny_policy_dir, dense_cfg, tmp_path_factory) -> dict[str, Path]:
    """The same learner's checkpoint three ways: its fusion at GATE, at gate 0, and without the fusion file."""
    torch.manual_seed(0)
    learner = LearnerCore(tiny_policy_dir, SCALES, micro_batch_size=8, dense=dense_cfg)
    with torch.no_grad():
        learner.dense.fusion.gate.fill_(GATE)
    root = tmp_path_factory.mktemp("runs")
    tmp = run_storage.staging_dir(root / "dense", learner.step)
    learner.save_checkpoint(tmp)
    dense = run_storage.commit(tmp, learner.step, {"model_path": str(tiny_policy_dir)})
    zero = shutil.copytree(dense, root / "zero" / dense.name)
    weights, meta = load_fusion(zero / FUSION_FILE)
    save_fusion(zero / FUSION_FILE, {**weights, "gate": torch.zeros_like(weights["gate"])}, meta)
    plain = shutil.copytree(dense, root / "plain" / dense.name)
    (plain / FUSION_FILE).unlink()
    return {"dense": dense, "zero": zero, "plain": plain}


def _answers(tmp_path: Path, checkpoint: Path, synth_root: Path) -> list[str]:
    out = tmp_path / checkpoint.parent.name
    assert main(["eval", "run", "--checkpoint", str(checkpoint), "--data", str(synth_root), "--out", str(out),
                 *FAST]) == 0
    return [json.loads(line)["predicted_answer"] for line in (out / "results.jsonl").read_text().splitlines()]


def test_the_checkpoint_gives_its_fusion_and_the_branch_it_was_trained_with(checkpoints, dense_cfg):
    policy = load_policy_from_checkpoint(checkpoints["dense"])
    assert policy.dense == dense_cfg and policy.dense_weights["gate"].item() == GATE
    assert load_policy_from_checkpoint(checkpoints["plain"]).dense is None


def test_eval_with_the_fusion_differs_from_without_at_a_nonzero_gate_and_equals_it_at_zero(checkpoints, synth_root,
                                                                                          tmp_path):
    plain = _answers(tmp_path, checkpoints["plain"], synth_root)
    assert _answers(tmp_path, checkpoints["dense"], synth_root) != plain
    assert _answers(tmp_path, checkpoints["zero"], synth_root) == plain


def test_a_fusion_trained_on_another_encoder_is_refused(checkpoints, synth_root, tmp_path):
    other = shutil.copytree(checkpoints["dense"], tmp_path / "other" / checkpoints["dense"].name)
    weights, meta = load_fusion(other / FUSION_FILE)
    save_fusion(other / FUSION_FILE, weights, {**meta, "encoder_id": "dinov2:0123456789abcdef"})
    policy = load_policy_from_checkpoint(other)
    with pytest.raises(EvalError, match="fusion trained on encoder dinov2:0123456789abcdef"):
        evaluate(policy, read_eval_records(synth_root, limit=1), RunOptions(routing="label", max_tokens=2))


@pytest.mark.vllm
def test_vllm_engine_evaluates_the_fusion_as_the_hf_engine(checkpoints, synth_root, tmp_path):
    hf = _answers(tmp_path / "hf", checkpoints["dense"], synth_root)
    out = tmp_path / "vllm"
    assert main(["eval", "run", "--checkpoint", str(checkpoints["dense"]), "--data", str(synth_root), "--out", str(out),
                 "--engine", "vllm", *FAST]) == 0
    assert [json.loads(line)["predicted_answer"] for line in (out / "results.jsonl").read_text().splitlines()] == hf
