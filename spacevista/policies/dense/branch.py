"""The dense branch (SpaceVista-7B): frozen self-supervised features fused into Qwen2.5-VL's visual tokens by
gated cross-attention, as a forward hook on the vision tower, so `model(...)`, `model.generate(...)` and the
embeddings handed to vLLM (`fused_visual_embeds`) all carry the same fused tokens.

Frame mapping (exact). Qwen2.5-VL's processor cuts every image or video into temporal patches of
`temporal_patch_size` (2) frames (an image is its frame twice; an odd video repeats its last frame), and
the tower's merger returns, per media item, grid_t * (grid_h / 2) * (grid_w / 2) tokens in (t, row, col)
order. The hook inverts the patchify on `pixel_values` to recover each item's frames, so a token of
temporal patch t attends to the encoder's patch features of frames 2t and 2t+1 of its own item (a still
image, whose copies are identical, contributes one frame; `frames_per_patch=1` keeps the first frame of
each pair). Fixed 2D sin-cos positions in normalised coordinates, added to queries and keys, align the
token grid with the encoder's patch grid. Output = visual + tanh(gate) * attention: gate 0 = base policy.

The fusion module lives outside the policy's parameters (like the router): peft, FSDP and the base
state dict are untouched; its weights save as one safetensors file and are versioned like the experts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spacevista.configs.dense import DenseConfig
from spacevista.policies.dense.cache import MB, FeatureCache, frame_key
from spacevista.policies.dense.encoders import FrameEncoder, build_dense_encoder
from spacevista.policies.dense.fusion import (
    DenseFusion,
    fusion_state_dict,
    grid_positions,
    load_fusion,
    load_fusion_state_dict,
    save_fusion,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2.5-VL's processors normalise with CLIP's statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frames_from_patches(pixel_values: torch.Tensor, grid_thw: torch.Tensor, patch: int, temporal: int,
                        merge: int) -> list[torch.Tensor]:
    """Invert Qwen2-VL's patchify: per media item [grid_t, temporal, C, H, W] (still normalised).

    Rows of `pixel_values` are (t, row/merge, col/merge, merge, merge), columns (C, temporal, patch, patch),
    the layout both Qwen2-VL image and video processors write."""
    channels = pixel_values.shape[1] // (temporal * patch * patch)
    out, offset = [], 0
    for t, h, w in grid_thw.tolist():
        x = pixel_values[offset:offset + t * h * w]
        x = x.reshape(t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
        out.append(x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, temporal, channels, h * patch, w * patch))
        offset += t * h * w
    return out


def visual_tower(model: nn.Module) -> nn.Module:
    """Qwen2.5-VL's vision tower inside a bare, peft-wrapped or FSDP-wrapped policy."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "visual" and hasattr(module, "merger"):
            return module
    raise ValueError("no Qwen2.5-VL vision tower (a `visual` module with a merger) in the model")


class DenseBranch:
    """The frozen encoder, the trainable fusion and the feature cache, hooked onto a policy's vision tower."""

    def __init__(self, encoder: FrameEncoder, fusion: DenseFusion, cache: FeatureCache | None = None,
                 frames_per_patch: int = 2, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD) -> None:
        if fusion.feature_dim != encoder.feature_dim:
            raise ValueError(f"fusion expects {fusion.feature_dim}-d features; the encoder gives {encoder.feature_dim}")
        self.encoder, self.fusion, self.frames_per_patch = encoder, fusion, frames_per_patch
        self.cache = cache if cache is not None else FeatureCache(memory_bytes=0)
        self._mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self._handle: Any = None
        self._enabled = True
        self._layout: tuple[int, int, int] | None = None  # patch, temporal patch, merge size of the tower
        self.config: DenseConfig | None = None  # what `build` was given: saved with the weights (eval rebuilds it)

    @classmethod
    def build(cls, cfg: DenseConfig, model: nn.Module, processor: Any = None, device: str | torch.device = "cpu",
              encoder: FrameEncoder | None = None) -> DenseBranch:
        """Encoder (from `cfg`, or the one given: e.g. a geometry encoder), fusion and cache, attached to `model`."""
        encoder = encoder or build_dense_encoder(cfg, device=device)
        hidden = int(visual_tower(model).config.out_hidden_size)
        fusion = DenseFusion(encoder.feature_dim, hidden, cfg.heads, cfg.projector).to(device)
        disk = cfg.cache_disk_dir if cfg.cache_disk_mb > 0 else None
        cache = FeatureCache(cfg.cache_memory_mb * MB, disk, cfg.cache_disk_mb * MB)
        image_processor = getattr(processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or CLIP_MEAN
        std = getattr(image_processor, "image_std", None) or CLIP_STD
        branch = cls(encoder, fusion, cache, cfg.frames_per_patch, mean, std)
        branch.config = cfg
        return branch.attach(model)

    # ---- hook ------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> DenseBranch:
        """Fuse every output of `model`'s vision tower from now on (idempotent per branch)."""
        self.detach()
        visual = visual_tower(model)
        cfg = visual.config
        self._layout = (cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size)
        self._handle = visual.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self._enabled:
            return output
        pixels = args[0] if args else kwargs["hidden_states"]
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        output.pooler_output = self.fuse(output.pooler_output, pixels, grid)
        return output

    # ---- fusion ----------------------------------------------------------------------------------
    def fuse(self, embeds: torch.Tensor, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Merged visual tokens [N, hidden] of the items in `grid_thw` -> fused tokens, same shape and order."""
        if self._layout is None:
            raise RuntimeError("DenseBranch.fuse before attach(model): the tower's patch layout is unknown")
        patch, temporal, merge = self._layout
        frames = frames_from_patches(pixel_values.detach().to("cpu", torch.float32), grid_thw, patch, temporal, merge)
        chosen = [x[:, :1] if self._is_still(x) else x[:, :self.frames_per_patch] for x in frames]
        features = self.features(chosen)
        dtype, device = self.fusion.gate.dtype, self.fusion.gate.device
        spans, groups, offset = [], defaultdict(list), 0
        for i, ((t, h, w), feats) in enumerate(zip(grid_thw.tolist(), features)):
            n = t * (h // merge) * (w // merge)
            spans.append((offset, n))
            offset += n
            groups[(t, h // merge, w // merge, feats.shape[1])].append(i)
        if offset != embeds.shape[0]:
            raise ValueError(f"dense branch: {embeds.shape[0]} visual tokens for grids that make {offset}")
        grid_h, grid_w = self.encoder.patch_grid()
        key_pos = grid_positions(grid_h, grid_w, self.fusion.hidden, device).to(dtype)
        fused: list[torch.Tensor] = [embeds[:0]] * len(frames)
        for (t, rows, cols, n_keys), items in groups.items():
            query = torch.stack([embeds[s:s + n].reshape(t, rows * cols, -1) for s, n in (spans[i] for i in items)])
            keys = torch.stack([features[i] for i in items]).to(device, dtype)
            out = self.fusion(query.reshape(len(items) * t, rows * cols, -1).to(dtype),
                              grid_positions(rows, cols, self.fusion.hidden, device).to(dtype),
                              keys.reshape(len(items) * t, n_keys, -1),
                              key_pos.repeat(n_keys // key_pos.shape[0], 1))
            for i, item_out in zip(items, out.to(embeds.dtype).reshape(len(items), t * rows * cols, -1)):
                fused[i] = item_out
        return torch.cat(fused)

    @staticmethod
    def _is_still(frames: torch.Tensor) -> bool:
        return all(torch.equal(frames[:, 0], frames[:, k]) for k in range(1, frames.shape[1]))

    def _rgb(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames * self._std + self._mean).clamp(0.0, 1.0)

    def features(self, items: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per item [grid_t, frames, C, H, W] (normalised) -> [grid_t, frames * K, D] encoder features,
        each frame (each clip, for joint encoders) looked up in the cache and encoded once if absent."""
        enc, joint = self.encoder, self.encoder.joint_frames
        units = [[x.reshape(-1, *x.shape[2:])] if joint else list(x.reshape(-1, *x.shape[2:])) for x in items]
        keys = [[frame_key(u, enc.encoder_id, enc.resolution) for u in unit] for unit in units]
        found: dict[str, torch.Tensor] = {}
        missing: dict[str, torch.Tensor] = {}
        for unit, unit_keys in zip(units, keys):
            for u, k in zip(unit, unit_keys):
                if k in found or k in missing:  # repeated within this call: served without the encoder
                    self.cache.stats.memory_hits += 1
                    continue
                hit = self.cache.get(k)
                if hit is None:
                    missing[k] = u
                else:
                    found[k] = hit
        if missing:
            if joint:
                computed = [enc.encode(self._rgb(u)) for u in missing.values()]
            else:
                computed = list(enc.encode(self._rgb(torch.stack(list(missing.values())))))
            for k, f in zip(missing, computed):
                self.cache.put(k, f)
                found[k] = f
        out = []
        for x, unit_keys in zip(items, keys):
            feats = torch.cat([found[k] if joint else found[k].unsqueeze(0) for k in unit_keys])  # [t * frames, K, D]
            feats = feats.to(self.fusion.gate.device)
            out.append(feats.reshape(x.shape[0], -1, feats.shape[-1]))
        return out

    # ---- trainable parts, weights ------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        """What the weights were trained with; `config` (the branch's DenseConfig as JSON) rebuilds the branch."""
        f = self.fusion
        meta = {"encoder_id": self.encoder.encoder_id, "feature_dim": str(f.feature_dim), "hidden": str(f.hidden),
                "heads": str(f.heads), "projector": f.projector_kind, "resolution": str(self.encoder.resolution)}
        if self.config is not None:
            meta["config"] = json.dumps(asdict(self.config), sort_keys=True)
        return meta

    def save(self, path: str | Path, version: int = 0) -> Path:
        return save_fusion(path, fusion_state_dict(self.fusion), {**self.metadata(), "version": str(version)})

    def load(self, path: str | Path) -> int:
        """Load fusion weights saved for the same encoder; returns their version."""
        state, meta = load_fusion(path)
        self.load_state(state, meta, str(path))
        return int(meta.get("version", 0))

    def load_state(self, state: Mapping[str, torch.Tensor], meta: Mapping[str, str], source: str = "weights") -> None:
        """Load fusion weights in place, refusing ones trained on another encoder's features."""
        if meta.get("encoder_id", self.encoder.encoder_id) != self.encoder.encoder_id:
            raise ValueError(f"{source}: fusion trained on encoder {meta['encoder_id']}, this branch runs "
                             f"{self.encoder.encoder_id}")
        load_fusion_state_dict(self.fusion, state)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base policy inside the block (the vision tower's output passes unfused), e.g. for
        reference log-probs."""
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = True


def load_checkpoint_fusion(branch: DenseBranch | None, weights: Mapping[str, torch.Tensor] | None,
                           meta: Mapping[str, str]) -> None:
    """A checkpoint's fusion weights into `branch`; a checkpoint and a learner must both have the branch or not."""
    if (weights is None) != (branch is None):
        raise ValueError(f"the checkpoint {'lacks' if weights is None else 'has'} a dense fusion; "
                         f"model.dense.enabled={branch is not None}")
    if branch is not None and weights is not None:
        branch.load_state(weights, meta, "checkpoint")


# ---- vLLM: the fused embeddings ------------------------------------------------------------------
@torch.no_grad()
def fused_visual_embeds(model: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Per media item, the visual tokens the policy's language model receives (fused when a branch is
    attached): what vLLM takes as `image_embeds` / `video_embeds` to serve an unchanged Qwen2.5-VL."""
    visual = visual_tower(model)
    dtype = next(visual.parameters()).dtype
    out = visual(pixel_values.to(dtype), grid_thw=grid_thw).pooler_output
    sizes = (grid_thw.prod(-1) // visual.spatial_merge_size ** 2).tolist()
    return list(torch.split(out, sizes))


def vllm_embedding_inputs(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """`multi_modal_data` for one vLLM prompt from its processor outputs (pixel_values[_videos] + grids):
    {"image": {"image_embeds", "image_grid_thw"}, "video": {"video_embeds", "video_grid_thw", ...}}."""
    data: dict[str, dict[str, torch.Tensor]] = {}
    for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):
        if inputs.get(pixels) is not None:
            embeds = fused_visual_embeds(model, inputs[pixels], inputs[grid])
            data[kind] = {f"{kind}_embeds": torch.cat(embeds).to("cpu"), grid: inputs[grid].to("cpu")}
    if "video" in data and inputs.get("second_per_grid_ts") is not None:
        data["video"]["second_per_grid_ts"] = torch.as_tensor(inputs["second_per_grid_ts"]).to("cpu")
    return data


