"""The offline tiny policy: built from a config, cached by its key, loads like any checkpoint, and
generates for a synthetic record with video frames on CPU."""

from __future__ import annotations

import json

from transformers import AutoModelForImageTextToText, AutoProcessor

from spacevista.configs.policy import TinyPolicyConfig
from spacevista.records.frames import load_video
from spacevista.datasets.synthetic.synth import synth_record, tokenizer_corpus
from spacevista.policies.tiny import build_tiny_policy, load_policy, policy_cache_key
from spacevista.rollout.engine import GenerationRequest, SamplingParams
from spacevista.rollout.hf_engine import HFEngine

ARCH = TinyPolicyConfig(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128)


def test_build_is_cached_by_config_and_corpus(tmp_path):
    corpus = tokenizer_corpus(samples=20)
    first = build_tiny_policy(tmp_path, corpus, ARCH)
    assert build_tiny_policy(tmp_path, corpus, ARCH) == first  # reused, not rebuilt
    assert first.name == policy_cache_key(ARCH, corpus)
    assert build_tiny_policy(tmp_path, corpus[:-1], ARCH) != first
    assert json.loads((first / "spacevista_tiny.json").read_text())["hidden_size"] == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]  # no half-written leftovers


def test_the_directory_loads_with_auto_classes_and_has_qwen_vl_tokens(tmp_path):
    path = build_tiny_policy(tmp_path, tokenizer_corpus(samples=20), ARCH)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == "qwen2_5_vl"
    for token in ("<|im_start|>", "<|im_end|>", "<|video_pad|>", "<|image_pad|>"):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")


def test_generates_for_a_synthetic_record_with_video_frames(tmp_path):
    path = build_tiny_policy(tmp_path, tokenizer_corpus(samples=20), ARCH)
    record = synth_record(3, seed=0, size=56)
    frames = load_video(record)
    assert len(frames) == 4 and frames[0].size == (56, 56)
    engine = HFEngine(path, sorted({"indoor", record.scale}))
    out = engine.generate([GenerationRequest("r", list(record.prompt), record.scale, videos=[frames])],
                          SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=0))
    assert len(out) == 2 and all(c.response_ids and isinstance(c.text, str) for c in out)
    model, _ = load_policy(path)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
