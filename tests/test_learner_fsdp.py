"""Two FSDP2 ranks (gloo, CPU) whose batches hold DIFFERENT experts and media vs one process."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_adam_weights_close
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import PeftModel

from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore
from spacevista.learner.objectives import ObjectiveConfig
from spacevista.learner.optim import OptimConfig
from spacevista.policies.tiny import load_policy
from spacevista.scales import SCALES, format_output

pytestmark = pytest.mark.slow
LR = 1e-2
KWARGS = dict(optim=OptimConfig(lr=LR, weight_decay=0.1), objective=ObjectiveConfig(kl_coef=0.01),
              micro_batch_size=2, sft_full_params=True, seed=0)


def _targets(samples) -> list[str]:
    return [format_output("look", s.expert, f"{s.record_id[-1]} m") for s in samples]


def _two_responses_each(samples) -> list:
    """GRPO-shaped: each prompt twice, the second time with a shorter response."""
    return [x for s in samples for x in (s, replace(s, response_ids=s.response_ids[:-1],
                                                     rollout_logprobs=s.rollout_logprobs[:-1], advantage=-s.advantage))]


def _train(learner: LearnerCore, sft_samples, rl_samples) -> dict[str, float]:
    learner.sft_step(sft_samples, _targets(sft_samples))  # base + vision tower trainable
    return learner.rl_step(collate(learner.processor, rl_samples))  # experts only


def _full(param: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value (collective for an FSDP2 shard; a replicated one is whole already)."""
    return param.full_tensor() if hasattr(param, "full_tensor") else param.detach()


def _rank_main(rank: int, world: int, init_file: str, model_path: str, sft: list, rl: list, out: str,
               shard_base: bool = True) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        learner = LearnerCore(model_path, SCALES, fsdp=True, shard_base=shard_base, **KWARGS)
        metrics = _train(learner, sft[rank], rl[rank])
        full = {n: _full(p).clone() for n, p in learner.model.named_parameters()}  # collective
        torch.save({"metrics": metrics, "params": full}, Path(out) / f"rank{rank}.pt")
        gathered = learner.expert_state_dicts()
        assert (gathered != {}) == (rank == 0)
        learner.save_checkpoint(Path(out) / "ckpt")
        learner.load_state_dict(learner.state_dict())  # broadcast from rank 0 must restore the same values
        again = {n: _full(p) for n, p in learner.model.named_parameters()}
        assert all(torch.equal(again[n], full[n]) for n in full)
        if rank == 0:
            torch.save(gathered, Path(out) / "gathered.pt")
    finally:
        dist.destroy_process_group()


def _spawn(args: tuple, timeout_s: float = 150.0) -> None:
    context = mp.spawn(_rank_main, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("FSDP ranks did not finish: a collective mismatch deadlocked them")


@pytest.mark.parametrize("shard_base", [True, False], ids=["base-sharded", "base-replicated"])
def test_fsdp_ranks_with_different_experts_match_one_process(tiny_policy_dir, policy_samples, tmp_path, shard_base):
    # rank 0: two experts, images + videos (2 vision-tower calls per micro-batch); rank 1: one other
    # expert, video + text (1 call). outdoor and drone are absent from RL; SFT: image vs text only.
    # rank 0's prompts each carry two responses (shared-prompt forwards), rank 1's are all distinct.
    rl = [_two_responses_each(policy_samples(2, ["tiny_tabletop", "indoor"], seed=10, media=("image", "video"),
                                             with_rollout_logprobs=True)),
          policy_samples(4, ["tabletop"], seed=11, media=("video", "text"), with_rollout_logprobs=True)]
    sft = [policy_samples(2, ["indoor"], seed=12, media=("image",)),
           policy_samples(2, ["drone"], seed=13, media=("text",))]
    _spawn((2, str(tmp_path / "pg-init"), str(tiny_policy_dir), sft, rl, str(tmp_path), shard_base))

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    assert all(torch.equal(ranks[0]["params"][n], ranks[1]["params"][n]) for n in ranks[0]["params"])

    reference = LearnerCore(tiny_policy_dir, SCALES, **KWARGS)
    initial = {n: p.detach().clone() for n, p in reference.model.named_parameters()}
    metrics = _train(reference, sft[0] + sft[1], rl[0] + rl[1])
    assert abs(metrics["loss"] - ranks[0]["metrics"]["loss"]) < 1e-5
    assert abs(metrics["grad_norm"] - ranks[0]["metrics"]["grad_norm"]) < 1e-5
    assert_adam_weights_close(ranks[0]["params"], {n: p.detach() for n, p in reference.model.named_parameters()}, LR)
    for name, param in reference.model.named_parameters():
        if ".outdoor." in name or ".drone." in name:
            assert torch.equal(ranks[0]["params"][name], initial[name]), f"absent expert moved: {name}"

    gathered = torch.load(tmp_path / "gathered.pt")
    for expert in ("indoor", "drone"):
        base, _ = load_policy(tmp_path / "ckpt" / "base")
        loaded = PeftModel.from_pretrained(base, tmp_path / "ckpt" / expert, adapter_name=expert)
        state = {k.replace(f".{expert}.", "."): v for k, v in loaded.state_dict().items() if f".{expert}." in k}
        assert state.keys() == gathered[expert].keys()
        assert all(torch.equal(state[k], gathered[expert][k]) for k in state)


def test_a_replicated_bf16_base_trains_fp32_experts_like_the_fp32_learner(tiny_policy_dir, policy_samples, tmp_path):
    """`shard_base=false` under bf16 mixed precision (the GPU path, run on CPU): the frozen base is held in bf16,
    the experts in fp32, forwards under autocast; one step's loss within bf16 rounding of the fp32 learner's."""
    import math

    from spacevista.policies.experts import is_lora

    kwargs = dict(optim=OptimConfig(lr=LR), objective=ObjectiveConfig(kl_coef=0.01), micro_batch_size=4, seed=0)
    samples = policy_samples(6, SCALES[:2], seed=3, with_rollout_logprobs=True)
    plain = LearnerCore(tiny_policy_dir, SCALES, **kwargs)
    reference = plain.rl_step(collate(plain.processor, samples))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg-init'}", rank=0, world_size=1)
    try:
        learner = LearnerCore(tiny_policy_dir, SCALES, fsdp=True, shard_base=False, mixed_precision="bf16", **kwargs)
        assert {is_lora(n): p.dtype for n, p in learner.model.named_parameters()} == {True: torch.float32,
                                                                                        False: torch.bfloat16}
        metrics = learner.rl_step(collate(learner.processor, samples))
    finally:
        dist.destroy_process_group()
    assert math.isfinite(metrics["loss"]) and metrics["nonfinite"] == 0.0
    assert metrics["pg_loss"] == pytest.approx(reference["pg_loss"], rel=0.05, abs=1e-3)
    assert metrics["grad_norm"] == pytest.approx(reference["grad_norm"], rel=0.05)
