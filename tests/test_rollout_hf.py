"""HFEngine: routed mixed-expert generation, versioned updates, logprobs, sampling determinism."""

from __future__ import annotations

import importlib.util
import math
import threading
import time

import pytest
import torch

from rollout_helpers import (EXPERTS, LORA, encode_alone, mixed_requests, peft_alone, random_experts,
                             teacher_forced_logprobs, text_request, video_request)
from spacevista.configs.schema import ModelConfig, RolloutConfig
from spacevista.policies.tiny import load_policy
from spacevista.rollout import BASE_EXPERT, Engine, SamplingParams, make_engine
from spacevista.rollout.hf_engine import HFEngine

GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def weights_v1(tiny_policy_dir):
    return random_experts(tiny_policy_dir, seed=1)


@pytest.fixture(scope="module")
def weights_v2(tiny_policy_dir):
    return random_experts(tiny_policy_dir, seed=2)


def new_engine(path, weights, **kwargs) -> HFEngine:
    engine = HFEngine(path, EXPERTS, LORA, **kwargs)
    engine.update_experts(1, weights)
    return engine


@pytest.fixture(scope="module")
def engine(tiny_policy_dir, weights_v1):
    """Read-only tests share this one; tests that update weights build their own."""
    return new_engine(tiny_policy_dir, weights_v1)


def test_mixed_batch_equals_each_request_alone_with_its_expert(engine):
    requests = mixed_requests()  # text, image and video prompts over all five experts
    mixed = engine.generate(requests, GREEDY)
    assert [c.request_id for c in mixed] == [r.request_id for r in requests]
    for request, completion in zip(requests, mixed):
        alone = peft_alone(engine, request, GREEDY.max_tokens)
        assert completion.response_ids == alone[:len(completion.response_ids)], request.request_id
        assert completion.expert == request.expert and completion.adapter_version == 1
    assert len({tuple(c.response_ids) for c in mixed}) > 1  # the experts really differ


def test_mixed_batch_equals_single_request_calls_of_the_engine(engine):
    requests = mixed_requests()
    mixed = engine.generate(requests, GREEDY)
    for request, completion in zip(requests, mixed):
        assert engine.generate([request], GREEDY)[0].response_ids == completion.response_ids


def test_base_expert_is_the_model_without_adapters(engine, tiny_policy_dir):
    request = text_request(0, BASE_EXPERT)
    model, _ = load_policy(tiny_policy_dir)  # no LoRA at all
    inputs = encode_alone(engine, request)
    with torch.inference_mode():
        ref = model.generate(**inputs, max_new_tokens=GREEDY.max_tokens, do_sample=False)
    ref = ref[0, inputs["input_ids"].shape[1]:]
    got = engine.generate([request, text_request(0, "indoor")], GREEDY)[0]
    assert got.response_ids == ref.tolist()[:len(got.response_ids)]


def test_an_engine_of_no_experts_serves_the_base_model(engine, tiny_policy_dir):
    """The base policy's engine (`eval run --checkpoint none`): no experts, every request names BASE_EXPERT."""
    base = make_engine(RolloutConfig(), str(tiny_policy_dir), ModelConfig(experts=[], lora=LORA))
    request = text_request(0, BASE_EXPERT)
    assert base.generate([request], GREEDY)[0].response_ids == engine.generate([request], GREEDY)[0].response_ids


def test_unknown_expert_is_rejected_naming_the_request(engine):
    with pytest.raises(KeyError, match="text-3.*underwater"):
        engine.generate([text_request(3, "underwater")], GREEDY)


def test_prompt_ids_hold_the_expanded_media_tokens(engine):
    completion = engine.generate([video_request(1, "drone")], GREEDY)[0]
    video_pad = engine.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert completion.prompt_ids.count(video_pad) == 8  # 4 frames of 56x56
    assert engine.tokenizer.pad_token_id not in completion.prompt_ids[:1]  # left padding stripped


def test_update_changes_only_the_updated_experts(tiny_policy_dir, weights_v1, weights_v2):
    engine = new_engine(tiny_policy_dir, weights_v1)
    requests = [text_request(i, e) for i, e in enumerate(EXPERTS)]
    before = engine.generate(requests, GREEDY)
    engine.update_experts(2, {"indoor": weights_v2["indoor"]})
    after = engine.generate(requests, GREEDY)
    assert engine.version == 2 and {c.adapter_version for c in after} == {2}
    for b, a in zip(before, after):
        assert (a.response_ids != b.response_ids) == (a.expert == "indoor"), a.expert


def test_update_from_another_thread_never_splits_a_generate_call(tiny_policy_dir, weights_v1, weights_v2):
    engine = new_engine(tiny_policy_dir, weights_v1, max_batch_size=2)  # several chunks: a long critical section
    requests = [text_request(i, EXPERTS[i % 5]) for i in range(10)]
    params = SamplingParams(temperature=0, max_tokens=16)
    expected = {1: engine.generate(requests, params)}
    reference = new_engine(tiny_policy_dir, weights_v2)
    expected[2] = reference.generate(requests, params)

    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", engine.generate(requests, params)))
    worker.start()
    while not engine._lock.locked():  # generation has started
        time.sleep(0.001)
    engine.update_experts(2, weights_v2)  # blocks until the running call is done
    worker.join()
    results["second"] = engine.generate(requests, params)

    for name, version in (("first", 1), ("second", 2)):
        assert {c.adapter_version for c in results[name]} == {version}
        assert [c.response_ids for c in results[name]] == [c.response_ids for c in expected[version]]


def test_logprobs_are_those_of_the_sampling_distribution(engine):
    params = SamplingParams(n=2, temperature=0.7, max_tokens=10, seed=3)
    requests = mixed_requests()[:6]
    completions = engine.generate(requests, params)
    for c in completions:
        assert len(c.logprobs) == len(c.response_ids) > 0
        assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
        request = next(r for r in requests if r.request_id == c.request_id)
        ref = teacher_forced_logprobs(engine, request, c.response_ids, params.temperature)
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4), c.request_id


def test_top_p_logprobs_are_renormalised_over_the_nucleus(engine):
    request = text_request(2, "tabletop")
    c = engine.generate([request], SamplingParams(temperature=1.0, top_p=0.5, max_tokens=10, seed=0))[0]
    full = teacher_forced_logprobs(engine, request, c.response_ids, 1.0)
    assert all(math.isfinite(x) for x in c.logprobs)
    assert (torch.tensor(c.logprobs) >= full - 1e-5).all()  # a nucleus holds less mass: each token gains


def test_n_samples_are_request_major_and_seeded(engine):
    requests = [text_request(i, e) for i, e in enumerate(["indoor", "drone"])]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=11)
    first, again = engine.generate(requests, params), engine.generate(requests, params)
    assert [(c.request_id, c.sample_index) for c in first] == [(r.request_id, k) for r in requests for k in range(3)]
    assert [c.response_ids for c in first] == [c.response_ids for c in again]
    other = engine.generate(requests, SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=12))
    assert [c.response_ids for c in other] != [c.response_ids for c in first]
    assert len({tuple(c.response_ids) for c in first[:3]}) > 1  # samples of one prompt differ


def test_greedy_n_repeats_the_greedy_completion(engine):
    completions = engine.generate([text_request(0, "outdoor")], SamplingParams(n=2, temperature=0, max_tokens=8))
    assert [c.sample_index for c in completions] == [0, 1]
    assert completions[0].response_ids == completions[1].response_ids


def test_completions_carry_the_prompt_the_learner_trains_on(engine):
    """The trajectory contract: one encoding per request, shared by its n samples, equal to the
    prompt encoded alone (so batching in the engine changes nothing the learner sees)."""
    from spacevista.policies.prompts import encode_prompts

    requests = mixed_requests()
    completions = engine.generate(requests, SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=3))
    for i, request in enumerate(requests):
        first, second = completions[2 * i], completions[2 * i + 1]
        assert first.prompt is second.prompt
        alone = encode_prompts(engine.processor, [request])[0]
        assert first.prompt.input_ids == alone.input_ids and first.prompt.mm_token_type_ids == alone.mm_token_type_ids
        assert first.prompt.media.keys() == alone.media.keys()
        assert all(torch.equal(first.prompt.media[k], alone.media[k]) for k in alone.media)


def test_make_engine_builds_the_configured_engine(tiny_policy_dir):
    model_cfg = ModelConfig(path=str(tiny_policy_dir), experts=EXPERTS)
    engine = make_engine(RolloutConfig(engine="hf"), str(tiny_policy_dir), model_cfg)
    assert isinstance(engine, Engine) and isinstance(engine, HFEngine) and engine.experts == EXPERTS
    with pytest.raises(ValueError, match="rollout.engine"):
        make_engine(RolloutConfig(engine="sglang"), str(tiny_policy_dir), model_cfg)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is importable here")
def test_vllm_engine_without_vllm_names_the_lane_script(tiny_policy_dir):
    with pytest.raises(ImportError, match="scripts/vllm_lane.sh"):
        make_engine(RolloutConfig(engine="vllm"), str(tiny_policy_dir), ModelConfig(path=str(tiny_policy_dir)))


def test_sampling_never_emits_media_placeholder_tokens(tiny_policy_dir):
    """A random policy would sample <|video_pad|> etc.; the learner could not re-encode such a response."""
    from spacevista.policies.chat import media_token_ids
    from spacevista.rollout.engine import GenerationRequest, SamplingParams
    from spacevista.rollout.hf_engine import HFEngine

    engine = HFEngine(tiny_policy_dir, ["indoor"])
    media = set(media_token_ids(engine.model.config))
    assert len(media) == 4
    requests = [GenerationRequest(request_id=str(i), messages=[{"role": "user", "content": "how far?"}],
                                  expert="indoor") for i in range(4)]
    out = engine.generate(requests, SamplingParams(n=8, temperature=2.0, max_tokens=24, seed=1))
    assert not any(media & set(c.response_ids) for c in out)
