"""The training job end to end on a local Ray (127.0.0.1, own temp dir): real rollout, reward and two
FSDP learner actors; outputs; checkpoint/resume bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from peft import PeftModel
from safetensors.torch import load_file

from spacevista.actors.controller import run_training
from spacevista.configs.loader import compose, to_train_config
from spacevista.policies.tiny import load_policy

pytestmark = pytest.mark.slow

SHORT = [
    "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.intermediate_size=128",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1", "model.lora.rank=4", "model.lora.alpha=8",
    "data.synth.n=60", "data.synth.size=56", "data.synth.test_fraction=0.1",
    "learner.sft.steps=2", "learner.sft.batch_size=4", "learner.micro_batch_size=2",
    "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_tokens=12",
    "curriculum=mixed", "log.progress=false", "log.samples_per_step=2",
]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return [f"data.synth.cache_dir={root / 'data'}", f"model.cache_dir={root / 'models'}"]


VARIED_REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """Spreads rewards within each GRPO group, so advantages (and expert updates) are never all zero."""
    return (sum(map(ord, solution_str)) % 11) / 10
'''


@pytest.fixture(scope="module")
def varied_reward(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "varied.py"
    path.write_text(VARIED_REWARD)
    return f"reward.plugins=[{{spec: '{path}:compute_score', weight: 1.0}}]"


def run(tmp: Path, caches: list[str], *overrides: str):
    cfg = to_train_config(compose([*SHORT, *caches, f"run_dir={tmp}", *overrides]))
    return run_training(cfg, tmp)


def expert_tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    return {f"{d.name}/{k}": v for d in sorted(step_dir.iterdir()) if (d / "adapter_model.safetensors").exists()
            for k, v in load_file(d / "adapter_model.safetensors").items()}


def test_short_embedded_default_runs_and_writes_its_outputs(local_ray, caches, tmp_path):
    result = run(tmp_path, caches, "steps=3", "checkpoint_every=2")
    assert result.steps == 3
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward/total", "reward/format", "reward/scale", "learner/pg_loss", "learner/kl", "perf/samples_per_s"):
        assert all(key in r for r in rows), key
    assert all(0.0 <= r["reward/total"] <= 1.0 for r in rows)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "reward_curves.png").stat().st_size > 0
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3 * 2
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_2", "step_3"]
    final = tmp_path / "checkpoints" / "step_3"
    base, _ = load_policy(final / "base")  # SFT trained the base: it is part of the checkpoint
    model = PeftModel.from_pretrained(base, final / "tabletop", adapter_name="tabletop")
    assert "tabletop" in model.peft_config


@pytest.mark.parametrize("mode", ["async_rollout=false", "async_rollout=true"])
def test_resume_continues_bit_for_bit(local_ray, caches, varied_reward, tmp_path, mode):
    straight, split = tmp_path / "straight", tmp_path / "split"
    quiet = ("checkpoint_every=2", "log.tensorboard=false", "log.plot=false", "eval_every=0", mode, varied_reward)
    run(straight, caches, "steps=4", *quiet)
    run(split, caches, "steps=2", *quiet)
    run(split, caches, "steps=4", "resume=auto", *quiet)

    a, b = expert_tensors(straight / "checkpoints" / "step_4"), expert_tensors(split / "checkpoints" / "step_4")
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = expert_tensors(split / "checkpoints" / "step_2")
    assert any(not torch.equal(before[k], a[k]) for k in a), "the experts did not move: nothing was tested"
    rows = {p: {r["step"]: r for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())}
            for p in (straight, split)}
    for step in (3, 4):
        assert rows[straight][step]["reward/total"] == rows[split][step]["reward/total"]
        assert rows[straight][step]["learner/loss"] == rows[split][step]["learner/loss"] != 0.0
        assert rows[straight][step]["rollout/staleness"] == rows[split][step]["rollout/staleness"]


def test_asking_for_more_gpus_than_the_cluster_has_fails_before_any_actor(local_ray, caches, tmp_path):
    from spacevista.cluster.resources import ResourceError

    with pytest.raises(ResourceError, match=r"need 4 GPU \(rollout 4 x 1\) but the cluster has 0"):
        run(tmp_path, caches, "steps=1", "cluster.rollout.count=4", "cluster.rollout.num_gpus=1")
    assert not (tmp_path / "metrics.jsonl").exists()
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if tmp_path.name in str(a)]
    assert named == []


def test_async_rollout_overlaps_generation_with_one_step_of_staleness(local_ray, caches, tmp_path):
    result = run(tmp_path, caches, "steps=3", "async_rollout=true", "eval_every=0", "log.plot=false",
                 "log.tensorboard=false")
    assert result.steps == 3
    staleness = [r["rollout/staleness"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert staleness == [0.0, 1.0, 1.0]  # step 1 has nothing to overlap with; later steps are one update behind
    assert (tmp_path / "checkpoints" / "step_3").is_dir()


@pytest.mark.parametrize("sft", ["lora", "lora+dense"])
def test_the_first_rollout_samples_the_policy_sft_trained(local_ray, caches, tmp_path, sft):
    """LoRA SFT (the official recipe) trains only the experts, and dense SFT the fusion: the rollout workers must
    serve them from the first step. The learner's log-probs of the sampled tokens then equal the sampler's."""
    dense = ["model.dense.enabled=true", f"model.dense.cache_dir={tmp_path / 'dense'}"] if "dense" in sft else []
    run(tmp_path, caches, "steps=1", "learner.sft.full_params=false", "eval_every=0", "log.plot=false",
        "log.tensorboard=false", *dense)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["learner/mismatch/logprob_gap_max"] < 1e-4, row["learner/mismatch/logprob_gap_max"]
    assert row["rollout/staleness"] == 0.0
    versions = [json.loads(x)["policy_version"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert versions == [2, 2]  # the two SFT steps raised the version the first rollout was sampled with
    assert not (tmp_path / "policy").exists()  # the base was not trained: the workers serve the original one


def test_the_job_runs_in_bfloat16_and_reports_its_mismatch(local_ray, caches, tmp_path):
    """The bf16 lane on CPU: the transformers rollout in bfloat16, the FSDP learner in bf16 mixed precision (a GPU
    run's code path); the rollout/learner gap is measured and finite, and the step goes through."""
    run(tmp_path, caches, "steps=1", "model.dtype=bfloat16", "learner.mixed_precision=bf16", "eval_every=0",
        "log.plot=false", "log.tensorboard=false")
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert 1e-4 < row["learner/mismatch/logprob_gap_max"] < 1.0  # bf16 rounding, not float32's 1e-6
    assert row["learner/nonfinite"] == 0.0 and row["learner/mismatch/is_weight_mean"] > 0.5


def test_rollout_workers_serve_what_lora_sft_trained_greedy_token_for_token(local_ray, caches, tmp_path):
    """After LoRA SFT the rollout workers' greedy outputs equal those of the learner's weights as its checkpoint
    files hold them (another path out of the learner), and differ from the fresh experts' (so this can fail)."""
    from spacevista.actors.controller import _sft_warmup, rollout_items
    from spacevista.actors.learner import LearnerGroup
    from spacevista.actors.pool import WorkerPool
    from spacevista.cluster.resources import reserve
    from spacevista.configs.experts import expert_map
    from spacevista.eval.policy import load_policy_from_checkpoint
    from spacevista.preflight import prepare_run
    from spacevista.rollout import SamplingParams, make_engine

    cfg = to_train_config(compose([*SHORT, *caches, f"run_dir={tmp_path}", "learner.sft.full_params=false",
                                   "learner.sft.steps=6"]))
    prep = prepare_run(cfg, tmp_path)
    items = rollout_items(prep.dataset.take(list(range(6))), "t", expert_map(cfg.model.experts,
                                                                              cfg.model.expert_of_scale))
    greedy = SamplingParams(temperature=0, max_tokens=12)
    learners = LearnerGroup(cfg, prep.model_path, reserve("learner", cfg.cluster.learner), "snapshot-test")
    try:  # the learners own the snapshot's objects: they live until the workers have pulled them, as in training
        _sft_warmup(cfg, prep, learners)
        checkpoint = learners.save(tmp_path, 0, {}, keep=0)
        snapshot = learners.snapshot()
        rollout = WorkerPool.rollout(str(prep.model_path), cfg.model, cfg.rollout,
                                     reserve("rollout", cfg.cluster.rollout), "snapshot-test", cfg.cluster)
        try:
            served = [c.response_ids for c in rollout.generate(items, greedy, snapshot, prompts="drop")]
        finally:
            rollout.shutdown()
    finally:
        learners.shutdown()
    assert snapshot.version == 6
    engine = make_engine(cfg.rollout, str(prep.model_path), cfg.model)
    fresh = [c.response_ids for c in engine.generate([i.request() for i in items], greedy)]
    engine.update_experts(1, load_policy_from_checkpoint(checkpoint).weights)
    assert served == [c.response_ids for c in engine.generate([i.request() for i in items], greedy)]
    assert served != fresh, "LoRA SFT did not move the greedy outputs: nothing was tested"
