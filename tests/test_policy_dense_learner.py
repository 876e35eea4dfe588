"""The dense branch inside `LearnerCore`: trained in RL and SFT as configured, next to the experts, and
checkpointed so that a resumed run continues bit for bit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_adam_weights_close

from spacevista.configs.dense import DenseConfig
from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore
from spacevista.learner.objectives import ObjectiveConfig
from spacevista.learner.optim import OptimConfig
from spacevista.scales import SCALES, format_output

OPTIM = OptimConfig(lr=1e-2, weight_decay=0.1)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("dense_encoder"))


def _learner(path, encoder_dir: str, **dense) -> LearnerCore:
    torch.manual_seed(0)
    return LearnerCore(path, SCALES, optim=OPTIM, objective=ObjectiveConfig(kl_coef=0.01), micro_batch_size=4,
                       dense=DenseConfig(enabled=True, cache_dir=encoder_dir, **dense))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_an_rl_step_trains_the_fusion_and_the_experts_and_logs_the_gate(tiny_policy_dir, policy_samples,
                                                                        encoder_dir):
    learner = _learner(tiny_policy_dir, encoder_dir)
    before, experts_before = learner.dense_state_dict(), learner.expert_state_dicts()
    metrics = learner.rl_step(collate(learner.processor, policy_samples(6, ["indoor"], with_rollout_logprobs=True)))
    assert "gate" in _changed(before, learner.dense_state_dict())  # at gate 0 only the gate has a gradient
    assert any(not torch.equal(v, learner.expert_state_dicts()["indoor"][k])
               for k, v in experts_before["indoor"].items())
    assert metrics["dense/gate"] != 0.0 and metrics["dense/grad_norm"] > 0 and metrics["dense/cache_misses"] > 0
    assert all(not p.requires_grad for p in learner.dense.encoder.model.parameters())


def test_trainable_parts_follow_train_rl_and_train_sft(tiny_policy_dir, policy_samples, encoder_dir):
    learner = _learner(tiny_policy_dir, encoder_dir, train_rl=["projector"], train_sft=[])
    with torch.no_grad():
        learner.dense.fusion.gate.fill_(0.5)  # so the projector gets a gradient
    before = learner.dense_state_dict()
    learner.rl_step(collate(learner.processor, policy_samples(6, ["indoor"], with_rollout_logprobs=True)))
    moved = _changed(before, learner.dense_state_dict())
    assert moved and all(k.startswith("projector.") for k in moved)
    samples = policy_samples(4, ["indoor"], seed=3)
    before = learner.dense_state_dict()
    learner.sft_step(samples, [format_output("look", "indoor", "1 m")] * len(samples))
    assert not _changed(before, learner.dense_state_dict())


def test_checkpoint_holds_the_fusion_and_resume_is_bit_for_bit(tiny_policy_dir, policy_samples, encoder_dir,
                                                               tmp_path):
    learner = _learner(tiny_policy_dir, encoder_dir)
    batches = [collate(learner.processor, policy_samples(6, SCALES[:3], seed=s, with_rollout_logprobs=True))
               for s in (5, 6)]
    learner.rl_step(batches[0])
    learner.save_checkpoint(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "dense_fusion.safetensors").exists()
    expected = learner.rl_step(batches[1])

    resumed = _learner(tiny_policy_dir, encoder_dir)
    resumed.load_checkpoint(tmp_path / "ckpt")
    got = resumed.rl_step(batches[1])
    assert got["loss"] == expected["loss"] and got["dense/grad_norm"] == expected["dense/grad_norm"]
    assert not _changed(learner.dense_state_dict(), resumed.dense_state_dict())
    after, after_resumed = learner.expert_state_dicts(), resumed.expert_state_dicts()
    assert all(torch.equal(after[e][k], after_resumed[e][k]) for e in after for k in after[e])

    plain = LearnerCore(tiny_policy_dir, SCALES, optim=OPTIM)
    with pytest.raises(ValueError, match="has a dense fusion; model.dense.enabled=False"):
        plain.load_checkpoint(tmp_path / "ckpt")


def _fsdp_rank(rank: int, init_file: str, model_path: str, encoder_dir: str, rl: list, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        learner = LearnerCore(model_path, SCALES, optim=OPTIM, objective=ObjectiveConfig(kl_coef=0.01),
                              micro_batch_size=2, fsdp=True, dense=DenseConfig(enabled=True, cache_dir=encoder_dir))
        with torch.no_grad():
            learner.dense.fusion.gate.fill_(0.5)
        metrics = learner.rl_step(collate(learner.processor, rl[rank]))
        torch.save({"metrics": metrics, "dense": learner.dense_state_dict()}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_fsdp_ranks_with_different_media_train_the_fusion_as_one_process(tiny_policy_dir, policy_samples,
                                                                              encoder_dir, tmp_path):
    # rank 0: images + videos; rank 1: text only (its vision calls are the sharding equaliser's dummies)
    rl = [policy_samples(4, ["indoor"], seed=20, media=("image", "video"), with_rollout_logprobs=True),
          policy_samples(4, ["tabletop"], seed=21, media=("text",), with_rollout_logprobs=True)]
    context = mp.spawn(_fsdp_rank, args=(str(tmp_path / "pg"), str(tiny_policy_dir), encoder_dir, rl, str(tmp_path)),
                       nprocs=2, join=False)
    deadline = time.monotonic() + 150
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("FSDP ranks did not finish: a collective mismatch deadlocked them")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(torch.equal(ranks[0]["dense"][k], ranks[1]["dense"][k]) for k in ranks[0]["dense"])

    reference = LearnerCore(tiny_policy_dir, SCALES, optim=OPTIM, objective=ObjectiveConfig(kl_coef=0.01),
                            micro_batch_size=4, dense=DenseConfig(enabled=True, cache_dir=encoder_dir))
    with torch.no_grad():
        reference.dense.fusion.gate.fill_(0.5)
    metrics = reference.rl_step(collate(reference.processor, rl[0] + rl[1]))
    assert abs(metrics["loss"] - ranks[0]["metrics"]["loss"]) < 1e-5
    assert abs(metrics["dense/grad_norm"] - ranks[0]["metrics"]["dense/grad_norm"]) < 1e-5
    assert_adam_weights_close(ranks[0]["dense"], reference.dense_state_dict(), OPTIM.lr)


def test_the_hf_engine_computes_the_branch_natively_and_takes_the_learners_fusion(tiny_policy_dir, encoder_dir):
    from rollout_helpers import image_request, video_request

    from spacevista.rollout.engine import SamplingParams
    from spacevista.rollout.hf_engine import HFEngine

    requests = [image_request(1, "indoor"), video_request(2, "outdoor")]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=6, seed=0)
    plain = HFEngine(tiny_policy_dir, SCALES)
    engine = HFEngine(tiny_policy_dir, SCALES, dense=DenseConfig(enabled=True, cache_dir=encoder_dir))
    ids = [c.response_ids for c in plain.generate(requests, greedy)]
    assert [c.response_ids for c in engine.generate(requests, greedy)] == ids  # gate 0: the base policy
    assert engine.dense.cache.stats.lookups > 0

    learner = _learner(tiny_policy_dir, encoder_dir)
    with torch.no_grad():
        learner.dense.fusion.gate.fill_(3.0)
    engine.update_dense(4, learner.dense_state_dict())
    assert engine.dense_version == 4 and not _changed(learner.dense_state_dict(), engine.dense.fusion.state_dict())
    with pytest.raises(ValueError, match="without the dense branch"):
        plain.update_dense(1, learner.dense_state_dict())
