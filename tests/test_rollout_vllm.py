"""VLLMEngine against the HF reference (run by scripts/vllm_lane.sh: real vLLM on the CPU).

One vLLM engine serves the whole module (loading one takes 25-50 s); tests that update it restore
what they changed. The HF engine with the same expert weights is the reference.
"""

from __future__ import annotations

import pytest
import torch

from rollout_helpers import (EXPERTS, LORA, image_request, mixed_requests, random_experts, teacher_forced_logprobs,
                             text_request, video_request)
from spacevista.learner.batch import TrainSample, collate
from spacevista.policies.experts import attach_experts, load_expert_state_dict
from spacevista.learner.logprobs import policy_logprobs
from spacevista.policies.tiny import load_policy
from spacevista.rollout import BASE_EXPERT, SamplingParams
from spacevista.rollout.hf_engine import HFEngine

pytestmark = pytest.mark.vllm

GREEDY = SamplingParams(temperature=0, max_tokens=12)
LOGPROB_TOLERANCE = 1e-3  # float32 on both sides; measured largest gap is printed by the test


@pytest.fixture(scope="module")
def weights(tiny_policy_dir):
    return {1: random_experts(tiny_policy_dir, seed=1), 2: random_experts(tiny_policy_dir, seed=2)}


@pytest.fixture(scope="module")
def hf(tiny_policy_dir, weights):
    engine = HFEngine(tiny_policy_dir, EXPERTS, LORA)
    engine.update_experts(1, weights[1])
    return engine


@pytest.fixture(scope="module")
def vllm_engine(tiny_policy_dir, weights):
    from spacevista.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_policy_dir, EXPERTS, LORA, max_model_len=512, max_num_seqs=32)
    engine.update_experts(1, weights[1])
    yield engine
    engine.close()


def tokens(completions) -> list[list[int]]:
    return [c.response_ids for c in completions]


def test_mixed_greedy_equals_hf_token_for_token(vllm_engine, hf):
    requests = mixed_requests()  # text, image and video prompts over all five experts, in one call
    got = vllm_engine.generate(requests, GREEDY)
    want = hf.generate(requests, GREEDY)
    assert [c.request_id for c in got] == [r.request_id for r in requests]
    for g, w in zip(got, want):
        assert g.prompt_ids == w.prompt_ids, g.request_id
        assert g.response_ids == w.response_ids, g.request_id
        assert (g.text, g.finish_reason, g.expert, g.adapter_version) == (w.text, w.finish_reason, w.expert, 1)
    assert len({tuple(c.response_ids) for c in got}) > 1


def test_base_expert_runs_apart_and_equals_hf(vllm_engine, hf):
    requests = [text_request(0, BASE_EXPERT), text_request(0, "indoor"), video_request(1, BASE_EXPERT),
                video_request(1, "drone")]
    assert tokens(vllm_engine.generate(requests, GREEDY)) == tokens(hf.generate(requests, GREEDY))


def test_min_tokens_agree_with_hf(vllm_engine, hf):
    requests = mixed_requests()[:5]
    for params in (SamplingParams(temperature=0, max_tokens=20, min_tokens=8),
                   SamplingParams(temperature=0, max_tokens=20, min_tokens=20)):
        got, want = vllm_engine.generate(requests, params), hf.generate(requests, params)
        assert [(c.response_ids, c.finish_reason) for c in got] == [(c.response_ids, c.finish_reason) for c in want]
    assert got[0].finish_reason == "length" and all(len(c.response_ids) == 20 for c in got)


def test_sampled_logprobs_match_hf_teacher_forcing(vllm_engine, hf):
    requests = mixed_requests()[:6]
    gaps = []
    for temperature in (1.0, 0.7):
        params = SamplingParams(n=2, temperature=temperature, max_tokens=12, seed=5)
        for c in vllm_engine.generate(requests, params):
            request = next(r for r in requests if r.request_id == c.request_id)
            assert len(c.logprobs) == len(c.response_ids) > 0
            ref = teacher_forced_logprobs(hf, request, c.response_ids, temperature)
            gaps.append((torch.tensor(c.logprobs) - ref).abs().max().item())
    print(f"\nlargest |vLLM logprob - HF teacher-forced logprob| over {len(gaps)} samples: {max(gaps):.2e}")
    assert max(gaps) < LOGPROB_TOLERANCE


def learner_and_rollout_logprobs(tiny_policy_dir, experts: dict, completions: list, temperature: float):
    """(learner, rollout, mask) [B, R]: the float32 learner's log-probs of the sampled tokens (one padded
    mixed-expert batch, `policy_logprobs`, as `rl_step` does) beside the ones the engine reported."""
    model, processor = load_policy(tiny_policy_dir)
    model = attach_experts(model, EXPERTS, LORA, trainable=False).eval()
    for expert, state in experts.items():
        load_expert_state_dict(model, expert, state)
    # the learner trains on the prompt as the rollout encoded it (the trajectory contract)
    samples = [TrainSample(prompt=c.prompt, response_ids=c.response_ids, expert=c.expert, uid=c.request_id)
               for c in completions]
    batch = collate(processor, samples)
    with torch.no_grad():
        learner, _ = policy_logprobs(model, batch, temperature)
    rollout = torch.zeros_like(learner)
    for i, c in enumerate(completions):
        rollout[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    return learner, rollout, batch.batch["response_mask"].bool()


def test_sampled_logprobs_match_the_learners_recomputation(vllm_engine, tiny_policy_dir, weights):
    """The rollout/training mismatch: vLLM sampled-token log-probs vs what the learner computes for the same tokens."""
    gaps = []
    for temperature in (1.0, 0.7):
        completions = vllm_engine.generate(mixed_requests(), SamplingParams(n=2, temperature=temperature,
                                                                            max_tokens=16, seed=11))
        learner, rollout, mask = learner_and_rollout_logprobs(tiny_policy_dir, weights[1], completions, temperature)
        gaps.append((learner - rollout).abs()[mask].max().item())
    print(f"\nlargest |vLLM logprob - learner logprob| (mixed batch of {len(completions)}, T=1.0 and 0.7): "
          f"{max(gaps):.2e}")
    assert max(gaps) < LOGPROB_TOLERANCE


def test_bf16_vllm_gap_against_the_float32_learner_and_its_correction(tiny_policy_dir, weights):
    """vLLM in bfloat16, as a GPU run serves, against the float32 learner: the mismatch metrics the learner logs
    and the truncated importance weights of `behaviour_logprobs=rollout` (printed; recorded in RESULTS.md)."""
    from spacevista.learner.objectives import ObjectiveConfig, behaviour_correction
    from spacevista.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_policy_dir, EXPERTS, LORA, max_model_len=512, max_num_seqs=32, dtype="bfloat16")
    try:
        engine.update_experts(1, weights[1])
        completions = engine.generate(mixed_requests(), SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=11))
    finally:
        engine.close()
    learner, rollout, mask = learner_and_rollout_logprobs(tiny_policy_dir, weights[1], completions, 0.7)
    _, is_weights, m = behaviour_correction(learner, rollout, mask, ObjectiveConfig(behaviour_logprobs="rollout"))
    print("\nbf16 vLLM vs float32 learner, " + ", ".join(f"{k}: {v:.2e}" for k, v in m.items()))
    assert LOGPROB_TOLERANCE < m["mismatch/logprob_gap_max"] < 0.5  # bf16 really served, and it is a rounding gap
    assert 0.9 < m["mismatch/is_weight_mean"] < 1.1 and is_weights[mask].max() <= 2.0


def test_seeded_sampling_is_reproducible(vllm_engine):
    requests = mixed_requests()[:4]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=9)
    first = vllm_engine.generate(requests, params)
    assert [(c.request_id, c.sample_index) for c in first] == [(r.request_id, k) for r in requests for k in range(3)]
    assert tokens(first) == tokens(vllm_engine.generate(requests, params))
    assert len({tuple(c.response_ids) for c in first[:3]}) > 1


def test_update_changes_only_updated_experts_and_drops_old_ids(vllm_engine, hf, weights, tiny_policy_dir):
    requests = [text_request(i, e) for i, e in enumerate(EXPERTS)]
    before = vllm_engine.generate(requests, GREEDY)
    old_ids = vllm_engine.loaded_lora_ids()
    reference = HFEngine(tiny_policy_dir, EXPERTS, LORA)
    reference.update_experts(2, weights[1] | {"indoor": weights[2]["indoor"]})

    vllm_engine.update_experts(2, {"indoor": weights[2]["indoor"]})
    after = vllm_engine.generate(requests, GREEDY)
    assert {c.adapter_version for c in after} == {2}
    assert tokens(after) == tokens(reference.generate(requests, GREEDY))
    for b, a in zip(before, after):
        assert (a.response_ids != b.response_ids) == (a.expert == "indoor"), a.expert
    ids = vllm_engine.loaded_lora_ids()
    assert len(ids) == len(EXPERTS) and len(old_ids - ids) == 1  # indoor's old id is gone, the rest kept

    vllm_engine.update_experts(3, {"indoor": weights[1]["indoor"]})  # back: a fresh id, never the stale one
    assert tokens(vllm_engine.generate(requests, GREEDY)) == tokens(before)
    assert not (vllm_engine.loaded_lora_ids() & (old_ids - ids))


def test_engine_inside_a_ray_actor_generates(tiny_policy_dir, weights, hf):
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        @ray.remote
        class Rollout:
            def __init__(self, path):
                from spacevista.rollout.vllm_engine import VLLMEngine

                self.engine = VLLMEngine(path, EXPERTS, LORA, max_model_len=512, max_num_seqs=8)

            def generate(self, version, experts, requests, params):
                self.engine.update_experts(version, experts)
                return self.engine.generate(requests, params)

            def close(self):
                self.engine.close()

        actor = Rollout.remote(str(tiny_policy_dir))
        requests = [text_request(i, e) for i, e in enumerate(EXPERTS)]
        got = ray.get(actor.generate.remote(1, weights[1], requests, GREEDY), timeout=300)
        assert tokens(got) == tokens(hf.generate(requests, GREEDY))
        ray.get(actor.close.remote(), timeout=60)
        ray.kill(actor)
    finally:
        ray.shutdown()


# ---- the dense branch: vLLM takes the fused visual embeddings -------------------------------------------------------
DENSE_GATE = 1.5  # tanh(1.5) = 0.91 of the cross-attention enters the visual tokens


@pytest.fixture(scope="module")
def dense(tiny_policy_dir, tmp_path_factory):
    """(the branch's config, fusion weights with a non-zero gate and random projector/attention)."""
    from spacevista.configs.dense import DenseConfig

    cfg = DenseConfig(enabled=True, cache_dir=str(tmp_path_factory.mktemp("dense_encoder")))
    torch.manual_seed(3)
    fusion = HFEngine(tiny_policy_dir, EXPERTS, LORA, dense=cfg).dense.fusion
    with torch.no_grad():
        fusion.gate.fill_(DENSE_GATE)
    return cfg, {k: v.detach().clone() for k, v in fusion.state_dict().items()}


@pytest.fixture(scope="module")
def hf_dense(tiny_policy_dir, weights, dense):
    engine = HFEngine(tiny_policy_dir, EXPERTS, LORA, dense=dense[0])
    engine.update_experts(1, weights[1])
    engine.update_dense(3, dense[1])
    return engine


@pytest.fixture(scope="module")
def vllm_dense(tiny_policy_dir, weights, dense):
    from spacevista.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_policy_dir, EXPERTS, LORA, max_model_len=512, max_num_seqs=32, dense=dense[0])
    engine.update_experts(1, weights[1])
    engine.update_dense(3, dense[1])
    yield engine
    engine.close()


def test_dense_branch_fused_embeddings_equal_hf_token_for_token(vllm_dense, hf_dense, hf):
    requests = mixed_requests() + [image_request(20, BASE_EXPERT), video_request(21, BASE_EXPERT)]
    got = vllm_dense.generate(requests, GREEDY)
    want = hf_dense.generate(requests, GREEDY)
    assert vllm_dense.dense_version == 3
    for g, w in zip(got, want):
        assert g.prompt_ids == w.prompt_ids, g.request_id  # the prompt the learner trains on, as before
        assert g.response_ids == w.response_ids, g.request_id
    plain = hf.generate(requests, GREEDY)  # the fusion matters: media prompts answer differently without it
    changed = {g.request_id for g, p in zip(got, plain) if g.response_ids != p.response_ids}
    assert changed and all(not rid.startswith("text-") for rid in changed), changed


def test_dense_branch_sampled_logprobs_match_hf_teacher_forcing(vllm_dense, hf_dense):
    requests = [r for r in mixed_requests() if not r.request_id.startswith("text-")]
    gaps = []
    for c in vllm_dense.generate(requests, SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)):
        request = next(r for r in requests if r.request_id == c.request_id)
        ref = teacher_forced_logprobs(hf_dense, request, c.response_ids, 1.0)
        gaps.append((torch.tensor(c.logprobs) - ref).abs().max().item())
    print(f"\ndense branch: largest |vLLM logprob - HF teacher-forced logprob| over {len(gaps)} samples: "
          f"{max(gaps):.2e}")
    assert max(gaps) < LOGPROB_TOLERANCE


def test_dense_update_to_a_zero_gate_serves_the_plain_policy(vllm_dense, hf, dense):
    requests = mixed_requests()
    zero = {**dense[1], "gate": torch.zeros_like(dense[1]["gate"])}
    vllm_dense.update_dense(4, zero)
    try:
        assert tokens(vllm_dense.generate(requests, GREEDY)) == tokens(hf.generate(requests, GREEDY))
    finally:
        vllm_dense.update_dense(5, dense[1])
