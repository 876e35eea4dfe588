"""LearnerCore on the tiny policy (one process): which experts move, SFT, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import torch
from conftest import assert_adam_weights_close
from peft import PeftModel

from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore
from spacevista.learner.objectives import ObjectiveConfig
from spacevista.learner.optim import OptimConfig
from spacevista.policies.tiny import load_policy
from spacevista.scales import SCALES, format_output

OPTIM = OptimConfig(lr=1e-2, weight_decay=0.1)


def _learner(path, **kwargs) -> LearnerCore:
    torch.manual_seed(0)
    kwargs = {"optim": OPTIM, "objective": ObjectiveConfig(kl_coef=0.01), "micro_batch_size": 4, **kwargs}
    return LearnerCore(path, SCALES, **kwargs)


def _weights(learner: LearnerCore) -> dict[str, dict[str, torch.Tensor]]:
    return learner.expert_state_dicts()


def _changed(before, after) -> set[str]:
    return {e for e in before if any(not torch.equal(before[e][k], after[e][k]) for k in before[e])}


def test_one_scale_batch_moves_only_its_expert(tiny_policy_dir, policy_samples):
    learner = _learner(tiny_policy_dir)
    batch = collate(learner.processor, policy_samples(6, ["indoor"]))
    before = _weights(learner)
    metrics = learner.rl_step(batch)
    assert _changed(before, _weights(learner)) == {"indoor"}
    assert metrics["experts_stepped"] == 1
    assert learner.stepped_experts == ["indoor"]


def test_absent_experts_untouched_by_momentum_and_weight_decay(tiny_policy_dir, policy_samples):
    learner = _learner(tiny_policy_dir)
    first = collate(learner.processor, policy_samples(6, ["tabletop", "drone"], seed=1))
    second = collate(learner.processor, policy_samples(6, ["tabletop"], seed=2))
    w0 = _weights(learner)
    learner.rl_step(first)
    w1 = _weights(learner)
    assert _changed(w0, w1) == {"tabletop", "drone"}
    learner.rl_step(second)  # drone has Adam moments and decay > 0, yet must not move
    assert _changed(w1, _weights(learner)) == {"tabletop"}


def test_kl_is_zero_at_initialisation(tiny_policy_dir, policy_samples):
    learner = _learner(tiny_policy_dir)
    metrics = learner.rl_step(collate(learner.processor, policy_samples(6, SCALES[:3], with_rollout_logprobs=True)))
    assert metrics["kl"] == 0.0  # fresh experts (B = 0) are the base model
    assert metrics["ppo_kl"] == 0.0  # the ratio is against the learner's own log-probs (one update per batch)
    assert metrics["mismatch/logprob_gap_mean"] > 0.0  # the made-up rollout log-probs differ from the policy's


def test_micro_batches_accumulate_to_the_full_batch_step(tiny_policy_dir, policy_samples):
    samples = policy_samples(8, SCALES[:3], seed=3, with_rollout_logprobs=True)
    results = []
    for micro in (2, 8):
        learner = _learner(tiny_policy_dir, micro_batch_size=micro)
        metrics = learner.rl_step(collate(learner.processor, samples))
        results.append((metrics, _weights(learner)))
    (m_small, w_small), (m_full, w_full) = results
    assert abs(m_small["loss"] - m_full["loss"]) < 1e-5
    assert abs(m_small["grad_norm"] - m_full["grad_norm"]) < 1e-5  # Adam hides gradient scale: check it here
    for e in w_full:
        assert_adam_weights_close(w_small[e], w_full[e], OPTIM.lr, tight=1e-3)


def test_shared_prompt_step_equals_the_plain_step_router_included(tiny_policy_dir, policy_samples):
    prompts = policy_samples(4, SCALES[:3], seed=6, with_rollout_logprobs=True)
    samples = [replace(s, response_ids=s.response_ids[:k], rollout_logprobs=s.rollout_logprobs[:k],
                       advantage=s.advantage * k)
               for s in prompts for k in (2, 3, 1)]  # three responses per prompt, as GRPO samples them
    results = []
    for share in (False, True):
        learner = _learner(tiny_policy_dir, share_prompts=share, micro_batch_size=6)
        metrics = learner.rl_step(collate(learner.processor, samples))
        results.append((metrics, _weights(learner), learner.router.state_dict()))
    (m_plain, w_plain, r_plain), (m_shared, w_shared, r_shared) = results
    for key in ("loss", "kl", "grad_norm", "router/loss"):
        assert abs(m_plain[key] - m_shared[key]) < 1e-5, key
    for e in w_plain:
        assert_adam_weights_close(w_shared[e], w_plain[e], OPTIM.lr, tight=1e-3)
    assert all(torch.allclose(r_plain[k], r_shared[k], atol=1e-6) for k in r_plain)


def test_full_parameter_sft_lowers_the_loss(tiny_policy_dir, policy_samples):
    learner = _learner(tiny_policy_dir, sft_full_params=True, optim=OptimConfig(lr=3e-3, weight_decay=0.0))
    samples = policy_samples(8, SCALES, seed=4)
    targets = [format_output("look at the scene", s.expert, f"{i + 1} m") for i, s in enumerate(samples)]
    losses = [learner.sft_step(samples, targets)["sft_loss"] for _ in range(12)]
    assert losses[-1] < 0.6 * losses[0], losses
    assert learner.base_trained


def test_checkpoint_experts_load_with_peft_and_resume_bit_for_bit(tiny_policy_dir, policy_samples, tmp_path):
    learner = _learner(tiny_policy_dir)
    batches = [collate(learner.processor, policy_samples(6, SCALES[:3], seed=s, with_rollout_logprobs=True))
               for s in (5, 6)]
    learner.rl_step(batches[0])
    learner.save_checkpoint(tmp_path / "ckpt")
    saved = _weights(learner)

    base, _ = load_policy(tiny_policy_dir)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "ckpt" / "indoor", adapter_name="indoor")
    loaded = {k.replace(".indoor.", "."): v for k, v in peft_model.state_dict().items() if ".indoor." in k}
    assert loaded.keys() == saved["indoor"].keys()
    assert all(torch.equal(loaded[k], saved["indoor"][k]) for k in loaded)

    expected = learner.rl_step(batches[1])
    resumed = _learner(tiny_policy_dir)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.step == 1
    got = resumed.rl_step(batches[1])
    assert got["loss"] == expected["loss"] and got["grad_norm"] == expected["grad_norm"]
    after, after_resumed = _weights(learner), _weights(resumed)
    assert all(torch.equal(after[e][k], after_resumed[e][k]) for e in after for k in after[e])


def test_trained_base_is_exported_for_rollout_workers(tiny_policy_dir, policy_samples, tmp_path):
    learner = _learner(tiny_policy_dir, sft_full_params=True)
    samples = policy_samples(4, SCALES[:2], seed=7)
    learner.sft_step(samples, [format_output("x", s.expert, "1 m") for s in samples])
    path = learner.export_policy(tmp_path / "policy")
    model, _ = load_policy(path)
    state = learner.base_state_dict()
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
