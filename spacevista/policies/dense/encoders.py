"""Frozen dense encoders for the dense branch: DINOv2 / DINOv3 ViTs through transformers, from a local
directory (a real checkpoint, or a tiny random one built offline here), behind one small Protocol that
a VGGT-style geometry encoder can implement too.

An encoder takes RGB frames in [0, 1] at any size and returns dense patch features per frame at its
configured square resolution: [frames, grid_h * grid_w, feature_dim] in row-major patch order.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from spacevista.atomic_dir import build_once
from spacevista.configs.dense import DenseConfig, TinyDenseEncoderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FrameEncoder(Protocol):
    """What the dense branch needs of an encoder. `joint_frames`: the features of a frame depend on
    the other frames of its clip (VGGT-style geometry), so the clip is encoded and cached as one unit."""

    encoder_id: str  # names the weights: part of every cache key
    resolution: int
    feature_dim: int
    joint_frames: bool

    def patch_grid(self) -> tuple[int, int]: ...

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...


def _directory_id(path: Path) -> str:
    """A cheap identity of a model directory: its config and the names and sizes of its weight files."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


class DenseEncoder:
    """A frozen DINOv2 / DINOv3 ViT (transformers `AutoModel`) producing per-frame patch features."""

    joint_frames = False

    def __init__(self, path: str | os.PathLike, resolution: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 16) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no dense encoder at {path} (expected a transformers directory with config.json)")
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)
        config = self.model.config
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        if resolution % patch:
            raise ValueError(f"model.dense.resolution={resolution}: not a multiple of the encoder's patch size {patch}")
        self.patch_size, self.resolution, self.batch_size = patch, resolution, batch_size
        self.feature_dim = int(config.hidden_size)
        self.encoder_id = f"{config.model_type}:{_directory_id(path)}"
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        pre = path / "preprocessor_config.json"
        if pre.exists():
            spec = json.loads(pre.read_text())
            mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
        self.device, self.dtype = torch.device(device), dtype
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def patch_grid(self) -> tuple[int, int]:
        side = self.resolution // self.patch_size
        return side, side

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] RGB in [0, 1] -> [N, grid_h * grid_w, feature_dim] (the last layer, normed)."""
        n_patches = self.patch_grid()[0] * self.patch_grid()[1]
        out = []
        for chunk in frames.split(self.batch_size):
            x = chunk.to(self.device, torch.float32)
            if x.shape[-2:] != (self.resolution, self.resolution):
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                                  antialias=True)
            x = ((x - self._mean) / self._std).to(self.dtype)
            hidden = self.model(pixel_values=x).last_hidden_state
            out.append(hidden[:, -n_patches:])  # drop the CLS and register tokens
        return torch.cat(out)


def tiny_encoder_key(cfg: TinyDenseEncoderConfig, kind: str, resolution: int) -> str:
    h = hashlib.sha256(json.dumps({"kind": kind, "resolution": resolution, **asdict(cfg)}, sort_keys=True).encode())
    return f"tiny-{kind}-" + h.hexdigest()[:16]


def _tiny_config(cfg: TinyDenseEncoderConfig, kind: str, resolution: int):
    common = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  patch_size=cfg.patch_size, image_size=resolution)
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2WithRegistersConfig

        if cfg.num_register_tokens:
            return Dinov2WithRegistersConfig(**common, mlp_ratio=2, num_register_tokens=cfg.num_register_tokens)
        return Dinov2Config(**common, mlp_ratio=2)
    if kind == "dinov3":
        from transformers import DINOv3ViTConfig

        return DINOv3ViTConfig(**common, intermediate_size=cfg.hidden_size * 2,
                               num_register_tokens=cfg.num_register_tokens)
    raise ValueError(f"no tiny encoder of kind {kind!r}: choose dinov2 or dinov3")


def build_tiny_dense_encoder(cache_dir: str | os.PathLike, cfg: TinyDenseEncoderConfig | None = None,
                             kind: str = "dinov2", resolution: int = 56) -> Path:
    """Build (or reuse from cache) a tiny random DINOv2/DINOv3 directory offline; returns its path.

    Written to a temporary directory and renamed into place (`atomic_dir.build_once`).
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = cfg or TinyDenseEncoderConfig()

    def build(tmp: Path) -> None:
        with torch.random.fork_rng():  # the caller's RNG stream must not depend on whether we built or reused
            torch.manual_seed(cfg.seed)
            model = AutoModel.from_config(_tiny_config(cfg, kind, resolution))
        model.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}, indent=1))

    target = Path(cache_dir).expanduser() / tiny_encoder_key(cfg, kind, resolution)
    return build_once(target, build, marker="config.json")


def build_dense_encoder(cfg: DenseConfig, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> FrameEncoder:
    """The configured encoder: `path` if given, else the tiny random one (built once, cached)."""
    if cfg.encoder == "geometry":
        raise NotImplementedError(
            "model.dense.encoder=geometry: no VGGT-style encoder ships here; implement "
            "spacevista.policies.dense.encoders.FrameEncoder (joint_frames=True) and pass it to DenseBranch")
    path = cfg.path or build_tiny_dense_encoder(cfg.cache_dir, cfg.tiny, cfg.encoder, cfg.resolution)
    return DenseEncoder(path, cfg.resolution, device=device, dtype=dtype, batch_size=cfg.encoder_batch_size)
