"""The paper's extra rewards (magnitude, semantic) with verl's signature, stage plugin weights, and the
ordered curriculum preset. The semantic encoder is a tiny random BERT built offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spacevista.configs.checks import ConfigError, check_config
from spacevista.configs.loader import compose, to_train_config
from spacevista.preflight import validate_config
from spacevista.rewards.paper import magnitude_reward, semantic_similarities
from spacevista.configs.schema import PluginConfig, RewardConfig, RewardWeights
from spacevista.rewards.pipeline import RewardPipeline
from spacevista.rewards.registry import load_reward
from spacevista.grammar.truth import parse_ground_truth
from spacevista.scales import format_output


def numeric(value: float, unit: str = "m") -> dict:
    return {"scale": "indoor", "task": "object_size", "answer": {"type": "numeric", "value": value, "unit": unit}}


@pytest.mark.parametrize("answer, gt, expected", [
    ("3 m", 3.0, 1.0), ("30 m", 3.0, 0.5), ("0.3 m", 3.0, 0.5), ("300 m", 3.0, 0.0), ("3000 m", 3.0, 0.0),
    ("100 cm", 1.0, 1.0),  # converted to the record's unit first
])
def test_magnitude_is_one_minus_half_the_log10_distance(answer, gt, expected):
    assert magnitude_reward(answer, parse_ground_truth(numeric(gt)))[0] == pytest.approx(expected)


def test_magnitude_scores_no_magnitude_as_zero():
    choice = parse_ground_truth({"scale": "indoor", "task": "closer",
                                 "answer": {"type": "choice", "value": "A", "choices": ["x", "y"]}})
    assert magnitude_reward("A", choice)[0] == 0.0
    assert magnitude_reward("-2 m", parse_ground_truth(numeric(3.0)))[0] == 0.0
    assert magnitude_reward("no idea", parse_ground_truth(numeric(3.0)))[0] == 0.0


def test_magnitude_plugin_has_verls_signature():
    name, fn = load_reward("magnitude")
    completion = format_output("measured it", "indoor", "30 m")
    assert name == "magnitude"
    assert fn(data_source="s", solution_str=completion, ground_truth=json.dumps(numeric(3.0)),
              extra_info=None) == pytest.approx(0.5)


def test_the_rewards_layer_imports_no_torch():
    code = "import sys, spacevista.rewards.registry, spacevista.rewards.paper; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A random 1-layer BERT and a word-level vocabulary, saved with save_pretrained (no download)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("minilm")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.",
             "m", "cm", "metres", "the", "chair", "table", "left", "right", "yes", "no"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(root)
    return str(root)


def test_semantic_similarity_is_one_for_the_same_text_and_batched_equals_single(tiny_encoder_dir):
    answers, truths = ["the chair", "left", "3 m", ""], ["the chair", "right", "3 m", "yes"]
    batched = semantic_similarities(answers, truths, tiny_encoder_dir)
    assert batched[0] == pytest.approx(1.0, abs=1e-5) and batched[2] == pytest.approx(1.0, abs=1e-5)
    assert batched[3] == 0.0 and all(0.0 <= s <= 1.0 for s in batched)
    single = [semantic_similarities([a], [t], tiny_encoder_dir)[0] for a, t in zip(answers, truths)]
    assert single == pytest.approx(batched, abs=1e-5)


def test_semantic_plugin_reads_its_model_dir_from_the_environment(tiny_encoder_dir, monkeypatch):
    monkeypatch.setenv("SPACEVISTA_SEMANTIC_MODEL", tiny_encoder_dir)
    text = {"scale": "indoor", "task": "description", "answer": {"type": "text", "value": "chair"}}
    _, fn = load_reward("semantic")
    got = fn(data_source="s", solution_str=format_output("looked", "indoor", "chair"), ground_truth=text)
    assert got == pytest.approx(1.0, abs=1e-5)


def test_a_stage_switches_a_plugin_on_by_its_weight():
    pipeline = RewardPipeline(RewardConfig(plugins=[PluginConfig("magnitude", weight=0.0)]))
    item = (numeric(3.0), format_output("measured", "indoor", "30 m"), "s", None)
    weights = RewardWeights(format=0.2, scale=0.3, accuracy=0.5)
    pipeline.set_weights(weights)
    off = pipeline.score_batch([item])[0]
    pipeline.set_weights(weights, {"magnitude": 1.0})
    on = pipeline.score_batch([item])[0]
    assert off.components["magnitude"] == on.components["magnitude"] == pytest.approx(0.5)
    assert on.total == pytest.approx((off.total * 1.0 + 0.5 * 1.0) / 2.0)
    pipeline.set_weights(weights)  # no stage plugin weights: the config's again
    assert pipeline.score_batch([item])[0].total == pytest.approx(off.total)
    with pytest.raises(ValueError, match="not configured"):
        pipeline.set_weights(RewardWeights(format=1.0), {"semantic": 1.0})


def test_ordered_curriculum_adds_format_answer_scale_in_that_order():
    cfg = to_train_config(compose(["curriculum=ordered"]))
    check_config(cfg, ["magnitude"])
    stages = cfg.curriculum.stages
    assert [s.name for s in stages] == ["format", "answer", "scale"]
    assert [s.reward_weights.accuracy > 0 for s in stages] == [False, True, True]
    assert [s.plugin_weights["magnitude"] > 0 for s in stages] == [False, False, True]


def test_semantic_stage_without_a_model_fails_before_ray(monkeypatch):
    monkeypatch.delenv("SPACEVISTA_SEMANTIC_MODEL", raising=False)
    monkeypatch.setattr("spacevista.rewards.paper.semantic_model_dir", lambda: None)
    with pytest.raises(ConfigError, match="SPACEVISTA_SEMANTIC_MODEL"):
        validate_config(to_train_config(compose(["curriculum=ordered_semantic"])))


def test_a_stage_naming_an_unconfigured_plugin_fails_naming_the_key():
    cfg = to_train_config(compose(["curriculum=mixed", "+curriculum.stages.0.plugin_weights.magnitude=1.0"]))
    with pytest.raises(ConfigError, match=r"curriculum.stages\[0\].plugin_weights.magnitude: no such plugin"):
        check_config(cfg)
