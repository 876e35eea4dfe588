"""Response log-probs: agree with generation, reference = base model, mixed = grouped gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from spacevista.policies.chat import media_token_ids
from spacevista.learner.batch import collate
from spacevista.policies.chat import to_chat_messages
from spacevista.policies.experts import ExpertLoRAConfig, attach_experts, expert_names, set_experts_trainable
from spacevista.learner.logprobs import forward_logprobs, policy_logprobs, prompt_groups, reference_logprobs
from spacevista.policies.tiny import load_policy
from spacevista.scales import SCALES

RANDOM_LORA = ExpertLoRAConfig(rank=4, alpha=8, init_lora_weights=False)  # experts that differ from the base


@pytest.fixture
def experts_model(tiny_policy_dir):
    torch.manual_seed(0)
    model, processor = load_policy(tiny_policy_dir)
    return attach_experts(model, SCALES, RANDOM_LORA), processor


@pytest.mark.parametrize("media", [("image", "video", "text"), ("text",)])
def test_logprobs_match_the_rollout_generation(experts_model, policy_samples, media):
    model, processor = experts_model
    samples = policy_samples(6, SCALES, media=media)
    texts = [processor.apply_chat_template(to_chat_messages(s.messages, len(s.images), len(s.videos)),
                                           add_generation_prompt=True, tokenize=False) for s in samples]
    enc = processor(text=texts, images=[i for s in samples for i in s.images] or None,
                    videos=[v for s in samples for v in s.videos] or None, padding=True, return_tensors="pt")
    temperature, steps = 0.7, 5
    with torch.no_grad():
        out = model.generate(**enc, adapter_names=[s.expert for s in samples], max_new_tokens=steps,
                             min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[:, -steps:]
    media = media_token_ids(model.config)  # masked by the learner as rollout never samples them
    expected = torch.stack([torch.log_softmax(logits.index_fill(-1, torch.tensor(media), float("-inf")) / temperature,
                                              -1).gather(-1, tokens[:, t:t + 1])[:, 0]
                            for t, logits in enumerate(out.logits)], dim=1)
    batch = collate(processor, [replace(s, response_ids=tokens[i].tolist()) for i, s in enumerate(samples)])
    with torch.no_grad():
        got, _ = policy_logprobs(model, batch, temperature)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_reference_logprobs_are_the_base_model_and_keep_experts_trainable(experts_model, tiny_policy_dir,
                                                                          policy_samples):
    model, processor = experts_model
    batch = collate(processor, policy_samples(6, SCALES, seed=1))
    plain, _ = load_policy(tiny_policy_dir)
    with torch.no_grad():
        expected, _ = forward_logprobs(plain, batch)
        with_experts, _ = policy_logprobs(model, batch)
    ref = reference_logprobs(model, batch, micro_batch_size=4)
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_experts, expected, atol=1e-3)  # the experts do change the outputs
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.requires_grad for p in lora)  # peft's disable_adapter would leave only one expert trainable


def _lora_grads(model) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if "lora_" in n}


def test_mixed_batch_gradients_equal_per_expert_gradients(experts_model, policy_samples):
    model, processor = experts_model
    present = ["tiny_tabletop", "indoor", "drone"]
    batch = collate(processor, policy_samples(7, present, seed=2))

    def loss(logprobs, part):
        return -(logprobs * part.batch["response_mask"]).sum()

    logprobs, _ = policy_logprobs(model, batch)
    loss(logprobs, batch).backward()
    mixed = _lora_grads(model)
    model.zero_grad(set_to_none=True)

    experts = list(batch.non_tensor_batch["expert"])
    for expert in present:  # peft's single-adapter path, one expert's samples at a time
        part = batch.select_idxs([i for i, e in enumerate(experts) if e == expert])
        model.base_model.set_adapter(expert)
        set_experts_trainable(model, expert_names(model))
        logprobs, _ = forward_logprobs(model, part)
        loss(logprobs, part).backward()
    grouped = _lora_grads(model)

    for name, grad in mixed.items():
        if any(f".{e}." in name for e in present):
            assert (grad - grouped[name]).norm() <= 1e-4 * grad.norm(), name  # float32 noise only
        else:
            assert grad is None and grouped[name] is None, f"absent expert got a gradient: {name}"


def grpo_samples(policy_samples, prompts: int, n: int, seed: int = 3, media=("image", "video", "text")) -> list:
    """`n` responses of different lengths to each of `prompts` prompts (mixed media and experts)."""
    rng = torch.Generator().manual_seed(seed)
    return [replace(s, response_ids=torch.randint(10, 200, (int(torch.randint(2, 9, (1,), generator=rng)),),
                                                  generator=rng).tolist(), uid=f"p{p}")
            for p, s in enumerate(policy_samples(prompts, SCALES[:3], seed=seed, media=media)) for _ in range(n)]


@pytest.mark.parametrize("media", [("image", "video", "text"), ("text",)])
def test_shared_prompts_give_the_same_logprobs_entropy_and_gradients(experts_model, policy_samples, media):
    model, processor = experts_model
    batch = collate(processor, grpo_samples(policy_samples, prompts=5, n=3, media=media))
    mask = batch.batch["response_mask"].bool()
    results = {}
    for share in (False, True):
        logprobs, entropy = policy_logprobs(model, batch, 0.7, with_entropy=True, share_prompts=share)
        (logprobs * mask).sum().backward()
        results[share] = (logprobs.detach(), entropy.detach(), _lora_grads(model),
                          reference_logprobs(model, batch, 0.7, share_prompts=share))
        model.zero_grad(set_to_none=True)
    (lp, ent, grads, ref), (lp_s, ent_s, grads_s, ref_s) = results[False], results[True]
    torch.testing.assert_close(lp_s[mask], lp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_s[mask], ent[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_s[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_s.keys()
    for name, grad in grads.items():
        if grad is None:
            assert grads_s[name] is None, name
        else:
            assert (grad - grads_s[name]).norm() <= 1e-4 * grad.norm() + 1e-6, name


def test_prompt_groups_are_a_requests_samples_by_uid_and_expert(experts_model, policy_samples):
    _, processor = experts_model
    same = policy_samples(1, ["indoor"], seed=4)[0]
    other = policy_samples(2, ["indoor"], seed=5)[1]  # another prompt, another uid
    samples = [same, replace(same, response_ids=[11, 12]), other,
               replace(same, expert="drone", response_ids=[13]), replace(same, uid="another-request")]
    groups = prompt_groups(collate(processor, samples), [s.expert for s in samples])
    assert groups.firsts == [0, 2, 3, 4]
    assert groups.inverse.tolist() == [0, 0, 1, 2, 3]


def test_a_uid_shared_by_different_prompts_is_refused(experts_model, policy_samples):
    _, processor = experts_model
    same = policy_samples(1, ["indoor"], seed=4)[0]
    other = policy_samples(2, ["indoor"], seed=5)[1]
    batch = collate(processor, [same, replace(other, uid=same.uid)])
    with pytest.raises(ValueError, match=f"share uid {same.uid!r} but not their prompt"):
        prompt_groups(batch, ["indoor", "indoor"])


def test_without_uids_prompts_are_grouped_by_content(experts_model, policy_samples):
    _, processor = experts_model
    same = policy_samples(1, ["indoor"], seed=4)[0]
    other = policy_samples(2, ["indoor"], seed=5)[1]
    samples = [replace(s, uid="") for s in (same, replace(same, response_ids=[11]), other, same)]
    groups = prompt_groups(collate(processor, samples), ["indoor"] * 4)
    assert groups.inverse.tolist() == [0, 0, 1, 0]
