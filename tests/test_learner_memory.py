"""Learner memory features give the plain path's loss and gradients (tiny policy, CPU, one process):
activation checkpointing, token-budget micro-batches, the attention kernel, FSDP2 mixed precision."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import assert_adam_weights_close

from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore
from spacevista.learner.memory import row_tokens, token_budget_plan, trim_left_padding
from spacevista.learner.objectives import ObjectiveConfig
from spacevista.learner.optim import OptimConfig
from spacevista.learner.sharding import mixed_precision_policy
from spacevista.policies.tiny import resolve_attn_implementation
from spacevista.scales import SCALES

OPTIM = OptimConfig(lr=1e-2, weight_decay=0.1)
TOL = 1e-5  # float32 sums in another order


def _learner(path, **kwargs) -> LearnerCore:
    torch.manual_seed(0)
    kwargs = {"optim": OPTIM, "objective": ObjectiveConfig(kl_coef=0.01), "micro_batch_size": 12, **kwargs}
    return LearnerCore(path, SCALES, **kwargs)


def _grpo_samples(policy_samples, n_prompts: int = 4, seed: int = 6) -> list:
    """Three responses per prompt, as GRPO samples them (so shared prompts have something to share)."""
    prompts = policy_samples(n_prompts, SCALES[:3], seed=seed, with_rollout_logprobs=True)
    return [replace(s, response_ids=s.response_ids[:k], rollout_logprobs=s.rollout_logprobs[:k],
                    advantage=s.advantage * k)
            for s in prompts for k in (2, 3, 1)]


def _step(path, samples, **kwargs) -> tuple[dict, dict, dict]:
    learner = _learner(path, **kwargs)
    metrics = learner.rl_step(collate(learner.processor, samples))
    return metrics, learner.expert_state_dicts(), learner.router.state_dict()


def _assert_same_step(a, b, keys=("loss", "kl", "grad_norm", "router/loss"), tol: float = TOL) -> None:
    (m_a, w_a, r_a), (m_b, w_b, r_b) = a, b
    for key in keys:
        assert abs(m_a[key] - m_b[key]) < tol, (key, m_a[key], m_b[key])
    for e in w_a:
        assert_adam_weights_close(w_b[e], w_a[e], OPTIM.lr, tight=1e-3)
    assert all(torch.allclose(r_a[k], r_b[k], atol=1e-6) for k in r_a)


@pytest.mark.parametrize("share", [False, True])
def test_gradient_checkpointing_gives_the_plain_step(tiny_policy_dir, policy_samples, share):
    samples = _grpo_samples(policy_samples)
    _assert_same_step(_step(tiny_policy_dir, samples, share_prompts=share),
                      _step(tiny_policy_dir, samples, share_prompts=share, gradient_checkpointing=True))


def test_gradient_checkpointing_with_full_parameter_sft(tiny_policy_dir, policy_samples):
    """Full SFT runs with every expert off (peft's disable flag, gone by backward): the recomputation
    must replay it, vision tower included."""
    samples = policy_samples(6, SCALES[:3], seed=2)
    targets = [f"<answer>{i}.5 m</answer>" for i in range(6)]
    results = []
    for ckpt in (False, True):
        learner = _learner(tiny_policy_dir, sft_full_params=True, gradient_checkpointing=ckpt)
        metrics = learner.sft_step(samples, targets)
        results.append((metrics, learner.base_state_dict()))
    (m_plain, w_plain), (m_ckpt, w_ckpt) = results
    assert abs(m_plain["sft_loss"] - m_ckpt["sft_loss"]) < TOL
    assert abs(m_plain["grad_norm"] - m_ckpt["grad_norm"]) < 1e-4
    assert_adam_weights_close(w_ckpt, w_plain, OPTIM.lr, tight=1e-3)


def _saved_activation_bytes(learner: LearnerCore, batch) -> int:
    """Bytes autograd keeps for backward outside checkpointed regions (checkpoint's own hooks take
    precedence inside them, so only what stays resident is counted)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        from spacevista.learner.logprobs import policy_logprobs
        logprobs, _ = policy_logprobs(learner.model, batch, share_prompts=learner.share_prompts)
    logprobs.sum().backward()
    return total


def test_gradient_checkpointing_keeps_far_fewer_activations(tiny_policy_dir, policy_samples):
    samples = _grpo_samples(policy_samples)
    sizes = []
    for ckpt in (False, True):
        learner = _learner(tiny_policy_dir, gradient_checkpointing=ckpt)
        sizes.append(_saved_activation_bytes(learner, collate(learner.processor, samples)))
    assert sizes[1] < 0.5 * sizes[0], sizes


@pytest.mark.parametrize("share", [False, True])
def test_token_budget_micro_batches_give_the_fixed_step(tiny_policy_dir, policy_samples, share):
    samples = _grpo_samples(policy_samples)
    fixed = _step(tiny_policy_dir, samples, share_prompts=share, micro_batch_size=len(samples))
    budget = _step(tiny_policy_dir, samples, share_prompts=share, max_tokens_per_micro_batch=120)
    _assert_same_step(fixed, budget)


def test_token_budget_plan_respects_the_budget_and_keeps_prompt_groups(tiny_policy_processor_batch):
    batch = tiny_policy_processor_batch
    prompt, response = (t.tolist() for t in row_tokens(batch))
    for share in (False, True):
        plan = token_budget_plan(batch, 120, share)
        assert sorted(r for rows in plan for r in rows) == list(range(len(batch)))
        assert len(plan) > 1
        width = batch.batch["responses"].shape[1]
        for rows in plan:
            prompts = {tuple(batch.batch["input_ids"][r, :-width].tolist()): prompt[r] for r in rows}
            cost = (sum(prompts.values()) if share else sum(prompt[r] for r in rows)) + sum(response[r] for r in rows)
            assert cost <= 120 or len(rows) == 1 or (share and len(prompts) == 1), (rows, cost)
        if share:  # the three responses of a prompt run in one micro-batch
            assert all(len(rows) % 3 == 0 for rows in plan)
    forced = token_budget_plan(batch, 120, True, count=len(token_budget_plan(batch, 120, True)) + 2)
    assert len(forced) == len(token_budget_plan(batch, 120, True)) + 2  # a rank told to run more splits groups


def test_trim_left_padding_keeps_every_used_column(tiny_policy_processor_batch):
    batch = tiny_policy_processor_batch
    part = trim_left_padding(batch.select_idxs([0, 1, 2]))
    full = batch.select_idxs([0, 1, 2])
    assert part.batch["input_ids"].shape[1] < full.batch["input_ids"].shape[1]
    assert part.batch["attention_mask"].sum() == full.batch["attention_mask"].sum()
    assert torch.equal(part.batch["responses"], full.batch["responses"])


@pytest.fixture
def tiny_policy_processor_batch(tiny_policy_dir, policy_samples):
    from spacevista.policies.tiny import load_policy

    _, processor = load_policy(tiny_policy_dir)
    return collate(processor, _grpo_samples(policy_samples))


def test_sdpa_and_eager_attention_give_the_same_step(tiny_policy_dir, policy_samples):
    samples = _grpo_samples(policy_samples)
    _assert_same_step(_step(tiny_policy_dir, samples, attn_implementation="sdpa"),
                      _step(tiny_policy_dir, samples, attn_implementation="eager"))


def test_attention_choice_resolves_by_device():
    assert resolve_attn_implementation("auto", "cpu") == "sdpa"
    assert resolve_attn_implementation("eager", "cpu") == "eager"
    with pytest.raises(ValueError, match="flash-attn"):
        resolve_attn_implementation("flash_attention_2", "cpu")
    with pytest.raises(ValueError, match="choose from"):
        resolve_attn_implementation("xformers", "cpu")


def test_mixed_precision_is_bf16_params_fp32_reduce_on_cuda_only():
    cuda = mixed_precision_policy("cuda", "auto")
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    cpu = mixed_precision_policy("cpu", "auto")
    assert (cpu.param_dtype, cpu.reduce_dtype) == (None, None)
    assert mixed_precision_policy("cpu", "bf16").param_dtype == torch.bfloat16
    assert mixed_precision_policy("cuda", "fp32").param_dtype is None


def test_fsdp_bf16_step_on_cpu_tracks_fp32_with_fp32_master_weights(tiny_policy_dir, policy_samples, tmp_path):
    """The GPU precision path (bf16 compute, fp32 reduction and weights) run on one gloo rank."""
    import torch.distributed as dist

    samples = _grpo_samples(policy_samples, n_prompts=2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        results = {}
        for mode in ("fp32", "bf16"):
            learner = _learner(tiny_policy_dir, fsdp=True, mixed_precision=mode, gradient_checkpointing=mode == "bf16")
            metrics = learner.rl_step(collate(learner.processor, samples))
            dtypes = {p.dtype for n, p in learner.model.named_parameters() if "lora_" in n}
            results[mode] = (metrics, dtypes)
    finally:
        dist.destroy_process_group()
    (m32, d32), (m16, d16) = results["fp32"], results["bf16"]
    assert d32 == d16 == {torch.float32}  # sharded master weights (and so AdamW) stay fp32
    assert abs(m16["loss"] - m32["loss"]) < 2e-2 * max(1.0, abs(m32["loss"]))
    assert abs(m16["grad_norm"] - m32["grad_norm"]) < 5e-2 * m32["grad_norm"]
