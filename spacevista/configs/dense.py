"""`model.dense`: the dense-feature branch of SpaceVista-7B (frozen self-supervised encoder -> projector ->
gated cross-attention from the policy's visual tokens). Pure data: no torch here (see `configs.policy`).

The branch's torch code lives in `spacevista.policies.dense.branch`; these dataclasses are its only defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spacevista.configs.policy import limits

DENSE_ENCODERS = ("dinov2", "dinov3", "geometry")  # geometry: a VGGT-style encoder plugged in by the user
DENSE_PARTS = ("projector", "attention", "gate")  # the fusion's trainable parts, by parameter prefix


@dataclass
class TinyDenseEncoderConfig:
    """A tiny random DINOv2/DINOv3 ViT built offline for CPU runs and tests (~40 k parameters)."""

    hidden_size: int = limits(32, ge=8)
    num_layers: int = limits(2, ge=1)
    num_heads: int = limits(2, ge=1)
    patch_size: int = limits(14, ge=2)
    num_register_tokens: int = limits(0, ge=0)
    seed: int = 0


@dataclass
class DenseConfig:
    """The dense branch: off by default (`enabled: false` = the plain Qwen2.5-VL policy)."""

    enabled: bool = False
    encoder: str = limits("dinov2", choices=DENSE_ENCODERS)
    path: str = ""  # a local transformers DINOv2/DINOv3 directory; "" builds the tiny random encoder
    cache_dir: str = "~/.cache/spacevista/models"  # where the tiny encoder is built
    tiny: TinyDenseEncoderConfig = field(default_factory=TinyDenseEncoderConfig)
    # square input of the encoder per frame, in pixels; a multiple of its patch size
    resolution: int = limits(56, ge=16)
    # of each Qwen temporal patch's 2 frames: 2 = both, 1 = the first only (half the encoder work)
    frames_per_patch: int = limits(2, ge=1, le=2)
    encoder_batch_size: int = limits(16, ge=1)  # frames per encoder call
    projector: str = limits("mlp", choices=("linear", "mlp"))
    heads: int = limits(4, ge=1)  # cross-attention heads; divide the LM's hidden size
    train_sft: list[str] = field(default_factory=lambda: list(DENSE_PARTS))  # parts trained in SFT
    train_rl: list[str] = field(default_factory=lambda: list(DENSE_PARTS))  # parts trained in RL
    lr: float = limits(0.0, ge=0.0)  # 0: the optimizer's base learning rate
    cache_memory_mb: int = limits(256, ge=0)  # features in memory (LRU by bytes); 0: none
    cache_disk_mb: int = limits(0, ge=0)  # and on disk, safetensors (LRU by bytes); 0: none
    cache_disk_dir: str = "~/.cache/spacevista/dense_features"


def dense_problems(cfg: DenseConfig) -> list[str]:
    """What `configs.checks` cannot see from field metadata: list items and cross-field rules, by key."""
    problems = [f"model.dense.{key}: unknown part {part!r} (choose from {list(DENSE_PARTS)})"
                for key in ("train_sft", "train_rl") for part in getattr(cfg, key) if part not in DENSE_PARTS]
    if cfg.enabled and not cfg.path and cfg.resolution % cfg.tiny.patch_size:
        problems.append(f"model.dense.resolution={cfg.resolution}: not a multiple of model.dense.tiny.patch_size="
                        f"{cfg.tiny.patch_size}")
    return problems
