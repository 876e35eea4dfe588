"""collate / sft_collate: verl DataProto layout, per-sample vision inputs, SFT labels."""

from __future__ import annotations

import pytest
import torch
from verl.utils.model import extract_multi_modal_inputs

from spacevista.learner.batch import END_OF_TURN, collate, sft_collate
from spacevista.policies.chat import PromptError
from spacevista.policies.tiny import load_policy
from spacevista.scales import SCALES


@pytest.fixture(scope="module")
def processor(tiny_policy_dir):
    return load_policy(tiny_policy_dir)[1]


def test_prompts_left_padded_responses_right_padded(processor, policy_samples):
    samples = policy_samples(6, SCALES, with_rollout_logprobs=True)
    batch = collate(processor, samples)
    ids, mask, resp, rmask = (batch.batch[k] for k in ("input_ids", "attention_mask", "responses", "response_mask"))
    width = max(len(s.response_ids) for s in samples)
    assert resp.shape == (6, width) and ids.shape[1] == batch.batch["mm_token_type_ids"].shape[1]
    assert torch.equal(ids[:, -width:], resp) and torch.equal(mask[:, -width:], rmask)
    prompt_len = ids.shape[1] - width
    for i, s in enumerate(samples):
        n = len(s.response_ids)
        assert resp[i, :n].tolist() == s.response_ids and rmask[i].sum() == n
        assert mask[i, prompt_len - 1] == 1  # every prompt ends where the responses start
        assert batch.batch["rollout_log_probs"][i, :n].tolist() == pytest.approx(s.rollout_logprobs)
        assert batch.batch["advantages"][i, :n].tolist() == pytest.approx([s.advantage] * n)
        assert torch.all(batch.batch["advantages"][i, n:] == 0)
    assert list(batch.non_tensor_batch["expert"]) == [s.expert for s in samples]
    assert list(batch.non_tensor_batch["record_id"]) == [s.record_id for s in samples]


def test_vision_inputs_are_kept_per_sample(processor, policy_samples):
    samples = policy_samples(6, SCALES)  # image, video, text, image, video, text
    batch = collate(processor, samples)
    for i, s in enumerate(samples):
        alone = collate(processor, [s]).non_tensor_batch["multi_modal_inputs"][0]
        mine = batch.non_tensor_batch["multi_modal_inputs"][i]
        assert mine.keys() == alone.keys()
        assert all(torch.equal(mine[k], alone[k]) for k in mine)
    assert set(batch.non_tensor_batch["multi_modal_inputs"][2]) == set()  # text only
    # a micro-batch of rows 1..3 re-concatenates to what the processor makes for those rows alone
    part = extract_multi_modal_inputs(list(batch.select_idxs([1, 3]).non_tensor_batch["multi_modal_inputs"]))
    direct = extract_multi_modal_inputs(list(collate(processor, [samples[1], samples[3]])
                                             .non_tensor_batch["multi_modal_inputs"]))
    assert all(torch.equal(part[k], direct[k]) for k in direct)


def test_rollout_logprobs_all_or_none(processor, policy_samples):
    samples = policy_samples(2, SCALES) + policy_samples(2, SCALES, with_rollout_logprobs=True)
    with pytest.raises(ValueError, match="all samples or none"):
        collate(processor, samples)


def test_placeholder_mismatch_names_the_record(processor, policy_samples):
    sample = policy_samples(1, SCALES)[0]
    sample.images = []
    with pytest.raises(PromptError, match=sample.record_id):
        collate(processor, [sample])


def test_sft_labels_only_on_the_completion(processor, policy_samples):
    samples = policy_samples(3, SCALES)
    targets = ["<answer>3 m</answer>", "<scale>indoor</scale>", "x"]
    batch = sft_collate(processor, samples, targets)
    eos = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    for i, target in enumerate(targets):
        labelled = batch.batch["labels"][i][batch.batch["labels"][i] != -100].tolist()
        assert labelled == processor.tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
    assert "rollout_log_probs" not in batch.batch.keys()
