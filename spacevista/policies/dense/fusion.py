"""The dense fusion (SpaceVista-7B): a projector and gated cross-attention from the visual tokens to the dense
features, with 2D sin-cos positions; its weights as one safetensors file. Output = visual + tanh(gate) *
attention, so gate 0 is the base policy. The fusion lives outside the policy's parameters (like the router):
peft, FSDP and the base state dict are untouched; `branch` hooks it into the vision tower."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from spacevista.configs.dense import DENSE_PARTS

FUSION_FILE = "dense_fusion.safetensors"


def grid_positions(height: int, width: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[height * width, dim] sin-cos positions of cell centres in normalised [0, 1] coordinates."""
    quarter = dim // 4
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    omega = 64.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / max(quarter, 1))
    y, x = yy.reshape(-1, 1) * omega, xx.reshape(-1, 1) * omega
    pos = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)
    return nn.functional.pad(pos, (0, dim - pos.shape[1]))


class CrossAttention(nn.Module):
    """Visual tokens (queries) attend to projected dense features (keys and values)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"model.dense.heads={heads} does not divide the language model's hidden size {hidden}")
        self.norm_query = nn.LayerNorm(hidden)
        self.norm_key = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, keys: torch.Tensor,
                key_pos: torch.Tensor) -> torch.Tensor:
        kv = self.norm_key(keys)
        out, _ = self.attn(self.norm_query(query) + query_pos, kv + key_pos, kv, need_weights=False)
        return out


class DenseFusion(nn.Module):
    """Projector + gated cross-attention; its parameter prefixes are the trainable parts (DENSE_PARTS)."""

    def __init__(self, feature_dim: int, hidden: int, heads: int = 4, projector: str = "mlp") -> None:
        super().__init__()
        if projector == "linear":
            self.projector: nn.Module = nn.Linear(feature_dim, hidden)
        elif projector == "mlp":
            self.projector = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        else:
            raise ValueError(f"model.dense.projector={projector!r}: choose linear or mlp")
        self.attention = CrossAttention(hidden, heads)
        self.gate = nn.Parameter(torch.zeros(1))  # tanh(0) = 0: the fused policy starts as the base policy
        self.feature_dim, self.hidden, self.heads, self.projector_kind = feature_dim, hidden, heads, projector

    def forward(self, visual: torch.Tensor, visual_pos: torch.Tensor, dense: torch.Tensor,
                dense_pos: torch.Tensor) -> torch.Tensor:
        """visual [B, Q, hidden], dense [B, K, feature_dim] -> fused visual [B, Q, hidden]."""
        attended = self.attention(visual, visual_pos, self.projector(dense), dense_pos)
        return visual + torch.tanh(self.gate) * attended


def _check_parts(parts: Iterable[str]) -> list[str]:
    parts = list(parts)
    unknown = sorted(set(parts) - set(DENSE_PARTS))
    if unknown:
        raise ValueError(f"unknown dense parts {unknown}: choose from {list(DENSE_PARTS)}")
    return parts


def fusion_parameters(fusion: DenseFusion, parts: Iterable[str] = DENSE_PARTS) -> dict[str, nn.Parameter]:
    """The fusion's parameters in `parts` (projector, attention, gate), by name."""
    parts = _check_parts(parts)
    return {n: p for n, p in fusion.named_parameters() if n.split(".")[0] in parts}


def set_fusion_trainable(fusion: DenseFusion, parts: Iterable[str]) -> None:
    """Exactly the parameters of `parts` require grad (e.g. `train_sft` or `train_rl` of the config)."""
    chosen = fusion_parameters(fusion, parts)
    for name, param in fusion.named_parameters():
        param.requires_grad_(name in chosen)


def fusion_state_dict(fusion: DenseFusion) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in fusion.state_dict().items()}


def load_fusion_state_dict(fusion: DenseFusion, state: Mapping[str, torch.Tensor]) -> None:
    """Copy weights into the fusion in place; strict on names and shapes."""
    own = fusion.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"dense fusion weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"dense fusion weight {k}: shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])


def save_fusion(path: str | Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """One safetensors file (a directory gets FUSION_FILE inside) with the branch's metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / FUSION_FILE
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path), metadata=dict(metadata))
    return path


def load_fusion(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if path.is_dir():
        path = path / FUSION_FILE
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def gate_value(fusion: DenseFusion) -> float:
    """tanh(gate): how much of the dense attention enters the visual tokens (logged)."""
    return math.tanh(float(fusion.gate.detach().float().reshape(-1)[0]))
