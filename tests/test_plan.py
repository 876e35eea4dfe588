"""`spacevista plan`: parameter counts equal transformers' own, a plan equals the hand calculation,
an impossible plan is refused naming its part (the CLI exits 1), a CPU-only config plans nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spacevista.cluster.plan import (
    GIB,
    BatchShape,
    LearnerSettings,
    ModelShape,
    PlanError,
    RolloutSettings,
    check_before_training,
    check_plans,
    learner_plan,
    rollout_plan,
)

CONFIGS = Path(__file__).parent / "fixtures" / "model_configs"
QWEN25_VL_7B = CONFIGS / "qwen2_5_vl_7b_instruct.json"  # the published config.json values (Hugging Face model card)
QWEN2_VL_7B = CONFIGS / "qwen2_vl_7b_instruct.json"


@pytest.mark.parametrize("path", [QWEN25_VL_7B, QWEN2_VL_7B])
@pytest.mark.parametrize("layout", ["transformers4", "transformers5"])
def test_parameter_counts_equal_the_transformers_model(path, layout, tmp_path):
    """Every parameter of the real architecture, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    shutil.copy(path, tmp_path / "config.json")
    config = AutoConfig.from_pretrained(tmp_path)
    if layout == "transformers5":
        config.save_pretrained(tmp_path)  # nested text_config
        assert "text_config" in json.loads((tmp_path / "config.json").read_text())
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    shape = ModelShape.from_path(tmp_path)
    assert shape.params() == sum(p.numel() for p in model.parameters())
    assert shape.layer_params() == sum(p.numel() for p in model.model.language_model.layers[0].parameters())
    assert shape.vision_block_params() == sum(p.numel() for p in model.model.visual.blocks[0].parameters())


def test_qwen25_vl_7b_figures():
    shape = ModelShape.from_path(QWEN25_VL_7B)
    assert shape.params() == 8_292_166_656  # the model card's "8.29B"
    assert shape.kv_bytes_per_token() == 2 * 28 * (4 * 128) * 2 == 57_344
    assert shape.visual_tokens(16, 448, 448) == (16 // 2) * (448 // 28) * (448 // 28) == 2048
    # LoRA on q, k, v, o, gate, up, down: rank * (in + out) each, per layer
    assert shape.lora_params(64) == 28 * 64 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584)
                                               + 2 * (3584 + 18944) + (18944 + 3584)) == 161_480_704


# The paper's 7B layout: 7 learner GPUs, 1 vLLM GPU, 80 GB cards; 4 experts of rank 64, 16 frames of
# 448x448 (2048 visual tokens) + 256 text tokens, responses up to 1024 tokens, n = 8, micro-batch 8.
BATCH = BatchShape(prompts_per_step=56, n=8, prompt_tokens=2048 + 256, response_tokens=1024, micro_batch=8,
                   visual_tokens=2048)
PAPER_LEARNER = LearnerSettings(ranks=7, experts=4, lora_rank=64, gradient_checkpointing=True)


def test_learner_plan_equals_the_hand_calculation():
    plan = learner_plan(ModelShape.from_path(QWEN25_VL_7B), BATCH, PAPER_LEARNER, 80 * GIB)
    h, kv, inter, layers, vocab = 3584, 512, 18944, 28, 152064
    tokens = 2304 + 8 * 1024  # one distinct prompt (its 8 samples share it) + 8 responses = 10,496
    per_token_layer = 2 * (6 * h + 4 * kv + 4 * inter) + 8 * h  # bf16 activations of one layer + fp32 norm stats
    expected = {
        "weights (sharded)": 8_292_166_656 * 4 // 7,  # fp32 master weights over 7 ranks
        "weights gathered for compute": (2 * vocab * h + h + 46_079_744 + 2 * 233_057_792) * 2,
        "LoRA weights+grads+AdamW": 4 * 161_480_704 * 16 // 7,
        "activations": layers * tokens * h * 2 + tokens * per_token_layer,  # layer inputs + one recomputed layer
        "prompt keys/values per sample": 8 * 2304 * 57_344,
        "logits": 8 * 1024 * vocab * (2 + 4 + 4 + 4),
        "vision tower (one block)": 2048 * 4 * 2 * (10 * 1280 + 4 * 3420),
        "CUDA context and buffers": int(1.5 * GIB),
    }
    assert plan.parts == expected
    assert plan.total / GIB == pytest.approx(32.1, abs=0.05)  # fits an 80 GB card; the logits are half of it
    assert plan.problems() == []


def test_vllm_plan_equals_the_hand_calculation():
    plan = rollout_plan(ModelShape.from_path(QWEN25_VL_7B), BATCH, RolloutSettings(engines=1), 4, 64, 80 * GIB)
    weights, lora = 8_292_166_656 * 2, 4 * 161_480_704 * 2
    left = int(0.9 * 80 * GIB) - weights - lora - 2 * GIB
    assert plan.parts == {"weights": weights, "LoRA slots": lora, "activations, CUDA graphs, encoder": 2 * GIB,
                          "KV cache": left}
    assert plan.must_fit["KV cache for one longest sequence"] == ((2304 + 1024) * 57_344, left)
    # prefix caching: a prompt's 8 samples hold 2304 + 8 * 1024 tokens of KV, not 8 * 3328
    held = int(left // ((2304 + 8 * 1024) * 57_344 / 8))
    assert f"holds {min(held, 256)} of the 256 sequences" in plan.notes[0]
    assert plan.problems() == []


def test_impossible_plan_is_refused_naming_the_part():
    """One 24 GiB card, no checkpointing, 16 rows of 3,328 tokens: activations alone are ~200 GiB."""
    batch = BatchShape(prompts_per_step=8, n=8, prompt_tokens=2304, response_tokens=1024, micro_batch=16)
    plan = learner_plan(ModelShape.from_path(QWEN25_VL_7B), batch,
                        LearnerSettings(ranks=1, experts=4, lora_rank=64, share_prompts=False), 24 * GIB)
    with pytest.raises(PlanError, match=r"learner: .* exceeds 24\.0 GiB \(largest parts, GiB: activations"):
        check_plans([plan])


def test_vllm_refused_when_one_sequence_has_no_kv_room():
    tight = RolloutSettings(engines=1, gpu_memory_utilization=0.22)  # 17.6 GiB of 80: weights + LoRA + 2 take 18.6
    plan = rollout_plan(ModelShape.from_path(QWEN25_VL_7B), BATCH, tight, 4, 64, 80 * GIB)
    assert any("KV cache for one longest sequence" in p for p in plan.problems())


def _model_dir(tmp_path: Path) -> Path:
    shutil.copy(QWEN25_VL_7B, tmp_path / "config.json")
    return tmp_path


def test_check_before_training_refuses_and_skips_cpu_jobs(tmp_path):
    from spacevista.configs.loader import compose, to_train_config

    assert check_before_training(to_train_config(compose([])), _model_dir(tmp_path)) == []  # CPU: nothing to plan
    gpu = to_train_config(compose(["cluster=single_node_8gpu", "cluster.gpu_memory_gib=24", "rollout.engine=vllm",
                                   "rollout.max_model_len=4096", "rollout.max_tokens=1024"]))
    with pytest.raises(PlanError, match="learner"):
        check_before_training(gpu, tmp_path)


def test_cli_plan_prints_and_exits_by_fit(tmp_path, capsys):
    from spacevista.cli import main

    common = ["plan", "--model", str(_model_dir(tmp_path)), "--frames", "16", "--frame-size", "448x448",
              "cluster=single_node_8gpu", "rollout.engine=vllm", "rollout.n=8", "rollout.max_tokens=1024",
              "model.lora.rank=64", "learner.micro_batch_size=8"]
    assert main(common + ["learner.gradient_checkpointing=true"]) == 0
    out = capsys.readouterr().out
    assert "learner: 4 GPU(s)" in out and "rollout: 4 GPU(s)" in out and "fits" in out
    assert main(common + ["--gpu-memory-gib", "24"]) == 1
    assert "this plan cannot fit" in capsys.readouterr().err


def test_replicated_base_plan_and_the_auto_choice():
    """`learner.shard_base=false`: the frozen base whole on every rank in bf16, the experts' state whole too; the
    rest as sharded. Auto replicates on the paper's 80 GB cards and shards on 24 GB ones."""
    from dataclasses import replace

    from spacevista.cluster.plan import REPLICATE_SHARE, plan_for_config, shard_base_plans
    from spacevista.configs.loader import compose, to_train_config

    model = ModelShape.from_path(QWEN25_VL_7B)
    replicated = learner_plan(model, BATCH, replace(PAPER_LEARNER, shard_base=False), 80 * GIB)
    sharded = learner_plan(model, BATCH, PAPER_LEARNER, 80 * GIB)
    assert replicated.parts["weights (replicated)"] == 8_292_166_656 * 2  # bf16: it never steps, no fp32 master
    assert replicated.parts["LoRA weights+grads+AdamW"] == 4 * 161_480_704 * 16
    assert "weights gathered for compute" not in replicated.parts
    same = set(sharded.parts) - {"weights (sharded)", "weights gathered for compute", "LoRA weights+grads+AdamW"}
    assert all(replicated.parts[k] == sharded.parts[k] for k in same)
    assert replicated.total / GIB == pytest.approx(48.4, abs=0.05)
    assert sharded.total / GIB == pytest.approx(32.1, abs=0.05)

    def config(*overrides: str):
        return to_train_config(compose(["cluster=single_node_8gpu", "cluster.learner.count=7", "rollout.n=8",
                                        "rollout.prompts_per_step=56", "rollout.max_model_len=3328",
                                        "rollout.max_tokens=1024", "model.lora.rank=64", "learner.micro_batch_size=8",
                                        "learner.gradient_checkpointing=true", "learner.sft.full_params=false",
                                        "model.experts=[tiny_tabletop,tabletop,indoor,outdoor]",
                                        "++model.expert_of_scale={drone:outdoor}", *overrides]))

    visual = dict(prompt_tokens=2304, visual_tokens=2048)
    assert not shard_base_plans(config(), model, 80 * GIB, BATCH)[0]  # 48.4 GiB < 0.9 x 80
    assert shard_base_plans(config(), model, 48 * GIB, BATCH)[0] and 48.4 > REPLICATE_SHARE * 48
    assert shard_base_plans(config("learner.shard_base=true"), model, 80 * GIB, BATCH)[0]
    assert shard_base_plans(config("learner.sft.full_params=true"), model, 80 * GIB, BATCH)[0]  # + base AdamW
    plan = plan_for_config(config(), model, 80 * GIB, **visual)[0]
    assert plan.parts == replicated.parts
    assert "base replicated (learner.shard_base=auto); sharded by FSDP2 it would take 32.1 GiB" in plan.notes[-1]
