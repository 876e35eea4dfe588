"""The dense branch on the tiny policy: a zero gate is the base policy exactly, the frame mapping inverts
Qwen's patchify, gradients reach only the fusion (and the experts), the feature cache, and the weights'
save/load round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from spacevista.configs.dense import DenseConfig, TinyDenseEncoderConfig
from spacevista.policies.dense.branch import (
    CLIP_MEAN,
    CLIP_STD,
    DenseBranch,
    fused_visual_embeds,
    vllm_embedding_inputs,
)
from spacevista.policies.dense.fusion import fusion_parameters, fusion_state_dict, load_fusion, set_fusion_trainable
from spacevista.policies.dense.cache import FeatureCache, frame_key
from spacevista.policies.dense.encoders import FrameEncoder, build_tiny_dense_encoder
from spacevista.policies.experts import attach_experts
from spacevista.policies.tiny import load_policy


def _frame(seed: int, size: int = 56) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _inputs(processor, kind: str, seeds=(0, 1, 2, 3)) -> dict:
    frames = [_frame(s) for s in seeds]
    media = {"images": [frames[0]]} if kind == "image" else {"videos": [frames]}
    content = [{"type": kind}, {"type": "text", "text": "how far is the chair?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return dict(processor(text=[text], return_tensors="pt", **media))


@pytest.fixture(scope="module")
def dense_cfg(tmp_path_factory) -> DenseConfig:
    return DenseConfig(enabled=True, cache_dir=str(tmp_path_factory.mktemp("dense_encoder")), heads=4)


@pytest.fixture
def policy(tiny_policy_dir):
    return load_policy(tiny_policy_dir)


def _branch(model, processor, cfg: DenseConfig, gate: float = 0.0) -> DenseBranch:
    torch.manual_seed(0)
    branch = DenseBranch.build(cfg, model, processor)
    with torch.no_grad():
        branch.fusion.gate.fill_(gate)
    return branch


def _base_and_fused_logits(policy, cfg: DenseConfig, kind: str, gate: float
                           ) -> tuple[torch.Tensor, torch.Tensor, DenseBranch]:
    """The policy's logits on one `kind` prompt before and after attaching a branch with `gate`, and the branch."""
    model, processor = policy
    inputs = _inputs(processor, kind)
    with torch.no_grad():
        base = model(**inputs).logits
        branch = _branch(model, processor, cfg, gate)
        fused = model(**inputs).logits
    return base, fused, branch


@pytest.mark.parametrize("kind", ["image", "video"])
def test_zero_gate_gives_the_base_policys_logits_exactly(policy, dense_cfg, kind):
    base, fused, branch = _base_and_fused_logits(policy, dense_cfg, kind, gate=0.0)
    assert branch.cache.stats.lookups > 0  # the branch really ran
    assert torch.equal(fused, base)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_nonzero_gate_changes_the_logits(policy, dense_cfg, kind):
    base, fused, _ = _base_and_fused_logits(policy, dense_cfg, kind, gate=1.0)
    assert (fused - base).abs().max() > 1e-4


def test_frames_from_the_patches_are_the_processors_frames_and_tokens_map_to_their_temporal_pair(policy, dense_cfg):
    model, processor = policy
    inputs = _inputs(processor, "video", seeds=(0, 1, 2, 3))
    branch = _branch(model, processor, dense_cfg)
    from spacevista.policies.dense.branch import frames_from_patches

    frames = frames_from_patches(inputs["pixel_values_videos"], inputs["video_grid_thw"], 14, 2, 2)[0]
    assert frames.shape == (2, 2, 3, 56, 56)  # 4 frames = 2 temporal patches of 2
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    for i, seed in enumerate((0, 1, 2, 3)):
        want = (torch.from_numpy(np.array(_frame(seed))).permute(2, 0, 1).float() / 255 - mean) / std
        torch.testing.assert_close(frames[i // 2, i % 2], want, atol=1e-5, rtol=0)
    features = branch.features([frames])[0]
    k = branch.encoder.patch_grid()[0] * branch.encoder.patch_grid()[1]
    assert features.shape == (2, 2 * k, branch.encoder.feature_dim)  # temporal patch t <- frames 2t, 2t+1
    alone = branch.encoder.encode(branch._rgb(frames[1, 1:2]))[0]
    torch.testing.assert_close(features[1, k:], alone)


def test_a_still_image_contributes_one_frame_and_frames_per_patch_one_keeps_the_first(policy, dense_cfg):
    model, processor = policy
    branch = _branch(model, processor, dense_cfg)
    image = _inputs(processor, "image")
    from spacevista.policies.dense.branch import frames_from_patches

    frames = frames_from_patches(image["pixel_values"], image["image_grid_thw"], 14, 2, 2)[0]
    assert torch.equal(frames[:, 0], frames[:, 1]) and branch._is_still(frames)
    with torch.no_grad():
        model(**image)
    assert branch.cache.stats.lookups == 1  # one frame looked up for the image, not two
    branch.frames_per_patch = 1
    video = _inputs(processor, "video")
    with torch.no_grad():
        model(**video)
    assert branch.cache.stats.lookups == 1 + 2  # the first frame of each of the 2 temporal patches


def test_gradients_reach_only_the_fusion_and_the_experts(policy, dense_cfg):
    model, processor = policy
    peft_model = attach_experts(model, ["indoor", "outdoor"])
    branch = _branch(peft_model, processor, dense_cfg, gate=0.5)
    inputs = _inputs(processor, "video")
    peft_model(**inputs, adapter_names=["indoor"]).logits.float().pow(2).mean().backward()
    fusion_names = {n for n, p in branch.fusion.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert fusion_names == {n for n, _ in branch.fusion.named_parameters()}
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n and ".indoor." in n for n in with_grad)
    assert all(p.grad is None and not p.requires_grad for p in branch.encoder.model.parameters())


def test_trainable_parts_are_configurable(policy, dense_cfg):
    model, processor = policy
    branch = _branch(model, processor, dense_cfg)
    set_fusion_trainable(branch.fusion, ["gate"])
    assert [n for n, p in branch.fusion.named_parameters() if p.requires_grad] == ["gate"]
    assert set(fusion_parameters(branch.fusion, ["projector"])) == {
        n for n, _ in branch.fusion.named_parameters() if n.startswith("projector.")}
    with pytest.raises(ValueError, match="unknown dense parts"):
        set_fusion_trainable(branch.fusion, ["encoder"])


def test_generate_and_the_vllm_embeddings_carry_the_fused_tokens(policy, dense_cfg):
    model, processor = policy
    inputs = _inputs(processor, "video")
    branch = _branch(model, processor, dense_cfg, gate=1.0)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    hook.remove()
    mask = inputs["input_ids"][0] == model.config.video_token_id
    data = vllm_embedding_inputs(model, inputs)
    assert torch.equal(data["video"]["video_grid_thw"], inputs["video_grid_thw"])
    torch.testing.assert_close(seen[0][0, mask], data["video"]["video_embeds"], rtol=0, atol=0)
    branch.detach()
    base = torch.cat(fused_visual_embeds(model, inputs["pixel_values_videos"], inputs["video_grid_thw"]))
    assert (base - data["video"]["video_embeds"]).abs().max() > 1e-4


def test_the_cache_returns_identical_features_and_counts_hits_over_a_grpo_group(policy, dense_cfg):
    model, processor = policy
    branch = _branch(model, processor, dense_cfg, gate=1.0)
    n = 4
    inputs = [_inputs(processor, "video") for _ in range(n)]  # the n samples of one prompt share its frames
    batch = {k: torch.cat([x[k] for x in inputs]) for k in ("pixel_values_videos", "video_grid_thw")}
    with torch.no_grad():
        first = fused_visual_embeds(model, batch["pixel_values_videos"], batch["video_grid_thw"])
        stats = branch.cache.stats
        assert (stats.misses, stats.memory_hits) == (4, 3 * 4)  # 4 distinct frames, encoded once
        again = fused_visual_embeds(model, batch["pixel_values_videos"], batch["video_grid_thw"])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert (stats.misses, stats.memory_hits) == (4, 3 * 4 + 16) and stats.hit_rate == pytest.approx(28 / 32)


def test_the_disk_cache_is_shared_and_bounded(tmp_path):
    key_a, key_b = frame_key(torch.zeros(3, 4, 4), "enc", 56), frame_key(torch.ones(3, 4, 4), "enc", 56)
    assert key_a != frame_key(torch.zeros(3, 4, 4), "enc", 112) != frame_key(torch.zeros(3, 4, 4), "other", 56)
    feats = torch.arange(64.0).reshape(16, 4)
    writer = FeatureCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=500)  # one 336-byte file fits, not two
    writer.put(key_a, feats)
    reader = FeatureCache(memory_bytes=1 << 20, disk_dir=tmp_path, disk_bytes=500)
    assert torch.equal(reader.get(key_a), feats) and reader.stats.disk_hits == 1
    assert torch.equal(reader.get(key_a), feats) and reader.stats.memory_hits == 1
    os.utime(tmp_path / f"{key_a}.safetensors", (1, 1))  # make it the least recently used file
    writer.put(key_b, feats + 1)  # two files exceed the bound: the least recently used one goes
    assert writer.disk_used() <= 500 and FeatureCache(0, tmp_path, 500).get(key_a) is None
    assert torch.equal(FeatureCache(0, tmp_path, 500).get(key_b), feats + 1)


def test_the_memory_cache_is_an_lru_bounded_in_bytes():
    cache = FeatureCache(memory_bytes=2 * 64)
    for i in range(3):
        cache.put(str(i), torch.full((16,), float(i)))  # 64 bytes each
    assert cache.get("0") is None and cache.get("1") is not None and cache.memory_used == 128
    cache.put("3", torch.zeros(16))  # "2" is now the least recently used
    assert cache.get("2") is None and cache.get("1") is not None


def test_fusion_weights_round_trip_exactly_and_refuse_another_encoder(policy, dense_cfg, tmp_path):
    model, processor = policy
    branch = _branch(model, processor, dense_cfg, gate=0.3)
    path = branch.save(tmp_path / "step_3", version=3)
    state, meta = load_fusion(path)
    assert meta["version"] == "3" and meta["encoder_id"] == branch.encoder.encoder_id
    torch.manual_seed(1)
    other = DenseBranch.build(dense_cfg, model, processor)
    assert other.load(tmp_path / "step_3") == 3
    assert all(torch.equal(v, fusion_state_dict(other.fusion)[k]) for k, v in fusion_state_dict(branch.fusion).items())
    other.encoder.encoder_id = "dinov2:another"
    with pytest.raises(ValueError, match="trained on encoder"):
        other.load(path)


def test_a_tiny_dinov3_encoder_serves_the_same_interface(policy, dense_cfg, tmp_path):
    model, processor = policy
    cfg = DenseConfig(enabled=True, encoder="dinov3", resolution=64, cache_dir=str(tmp_path),
                      tiny=TinyDenseEncoderConfig(patch_size=16, num_register_tokens=2))
    branch = _branch(model, processor, cfg, gate=1.0)
    assert isinstance(branch.encoder, FrameEncoder) and branch.encoder.patch_grid() == (4, 4)
    with torch.no_grad():
        model(**_inputs(processor, "image"))
    assert build_tiny_dense_encoder(tmp_path, cfg.tiny, "dinov3", 64).name.startswith("tiny-dinov3-")
    with pytest.raises(NotImplementedError, match="FrameEncoder"):
        DenseBranch.build(DenseConfig(encoder="geometry"), model, processor)


def test_the_config_group_is_torch_free_structured_data_and_names_bad_parts():
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from spacevista.configs.dense import dense_problems

    code = "import sys, spacevista.configs.dense; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DenseConfig), {"train_rl": ["gate"]}))
    assert cfg.train_rl == ["gate"] and dense_problems(cfg) == []
    assert "model.dense.train_sft: unknown part 'encoder'" in dense_problems(DenseConfig(train_sft=["encoder"]))[0]
    assert "model.dense.resolution=60" in dense_problems(DenseConfig(enabled=True, resolution=60))[0]


def test_model_dense_composes_from_overrides_and_bad_values_fail_naming_the_key():
    from spacevista.configs.checks import ConfigError, check_config
    from spacevista.configs.loader import compose, to_train_config

    cfg = to_train_config(compose(["model.dense.enabled=true", "model.dense.train_rl=[gate]"]))
    assert cfg.model.dense.enabled and cfg.model.dense.train_rl == ["gate"] and not to_train_config(
        compose([])).model.dense.enabled
    check_config(cfg)
    with pytest.raises(ConfigError, match="model.dense.train_sft: unknown part 'encoder'"):
        check_config(to_train_config(compose(["model.dense.train_sft=[encoder]"])))
    with pytest.raises(ConfigError, match="model.dense.frames_per_patch"):
        check_config(to_train_config(compose(["model.dense.frames_per_patch=3"])))


def test_disabled_gives_the_base_policy_back_inside_the_block(policy, dense_cfg):
    model, processor = policy
    inputs = _inputs(processor, "image")
    with torch.no_grad():
        base = model(**inputs).logits
        branch = _branch(model, processor, dense_cfg, gate=1.0)
        with branch.disabled():
            assert torch.equal(model(**inputs).logits, base)
        assert not torch.equal(model(**inputs).logits, base)


def test_building_the_tiny_encoder_leaves_the_callers_random_stream_alone(tmp_path):
    torch.manual_seed(3)
    build_tiny_dense_encoder(tmp_path, TinyDenseEncoderConfig(seed=7))
    drawn = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(4))  # ranks that build and ranks that reuse init the fusion alike
