"""FSDP2 for the policy: shard per decoder layer and per vision block, root on the HF model.

The root is the inner Hugging Face model, not the PeftModel (with the PeftModel as root, `generate`
fails on mixed Tensor/DTensor embeddings). Two hazards of mixed-expert, mixed-media batches:

- Ranks whose batches hold different experts would reduce-scatter different gradient sets and
  crash/deadlock. torch's `set_reduce_scatter_unused_params(True)` makes FSDP reduce a zero
  gradient for every trainable parameter that got none, so all ranks issue the same collective.
- Each vision block all-gathers its weights once per call of the vision tower, and Qwen-VL calls
  it once for images and once for videos, only when present. A rank without images would skip
  an all-gather the others make. `_VisionCallEqualizer` tops every forward up to exactly two
  vision-tower calls with a 16-patch dummy whose output enters the graph multiplied by 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from peft import PeftModel
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from spacevista.policies.experts import is_lora

VISION_CALLS_PER_FORWARD = 2  # Qwen-VL: one call for images, one for videos


class _VisionCallEqualizer:
    """Tops each forward up to `VISION_CALLS_PER_FORWARD` vision-tower calls (see module doc)."""

    def __init__(self, hf_model: nn.Module) -> None:
        self.visual = hf_model.model.visual
        config = hf_model.config.vision_config
        self.patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
        self.calls = 0
        self.visual.register_forward_pre_hook(self._count)
        hf_model.model.language_model.register_forward_pre_hook(self._top_up, with_kwargs=True)

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1

    def _top_up(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        embeds = kwargs["inputs_embeds"]
        for _ in range(VISION_CALLS_PER_FORWARD - self.calls):
            pixels = torch.zeros(16, self.patch_dim, dtype=embeds.dtype, device=embeds.device)
            grid = torch.tensor([[1, 4, 4]], dtype=torch.long, device=embeds.device)
            embeds = embeds + 0.0 * self.visual(pixels, grid_thw=grid).pooler_output.mean()
        self.calls = 0
        kwargs["inputs_embeds"] = embeds
        return args, kwargs


MIXED_PRECISION = ("auto", "bf16", "fp32")


def mixed_precision_policy(device_type: str, mode: str = "auto") -> MixedPrecisionPolicy:
    """FSDP2 precision: `bf16` = bf16 parameters in forward/backward, fp32 gradient reduction (the
    sharded master weights and AdamW stay fp32); `fp32` = none; `auto` = bf16 on CUDA, fp32 elsewhere
    (bf16 is slower on CPUs without AMX and changes the numerics the CPU tests compare)."""
    if mode not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={mode!r}: choose from {MIXED_PRECISION}")
    if mode == "bf16" or (mode == "auto" and device_type == "cuda"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_policy(model: PeftModel, device_type: str, mixed_precision: str = "auto") -> DeviceMesh:
    """Apply FSDP2 in place over all ranks of the default process group; returns the mesh.

    Precision per `mixed_precision_policy(device_type, mixed_precision)`.
    """
    if not dist.is_initialized():
        raise RuntimeError("fsdp=True needs torch.distributed initialised (gloo on CPU, nccl on GPU)")
    hf_model = model.get_base_model()
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = mixed_precision_policy(device_type, mixed_precision)
    for layer in hf_model.model.language_model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    for block in hf_model.model.visual.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(hf_model, mesh=mesh, mp_policy=policy)
    hf_model.set_reduce_scatter_unused_params(True)
    if dist.get_world_size() > 1:
        _VisionCallEqualizer(hf_model)
    return mesh


BUCKET_BYTES = 64 * 1024 ** 2  # gradients all-reduced per collective when the base is replicated


def replicate_policy(model: PeftModel, device_type: str, mixed_precision: str = "auto",
                     base_trained: bool = False) -> torch.dtype | None:
    """The base replicated on every rank (no FSDP: `shard_base=false`); returns the autocast dtype (None: fp32).

    Under mixed precision (`mixed_precision_policy` decides it, as for FSDP2) the frozen base is cast to bf16 (no
    master copy needed: it never steps) and forwards run under bf16 autocast; trainable parameters (the experts,
    and the base while `base_trained`) stay fp32. Every rank starts from the same weights (same seed, same files),
    so replicas stay equal as long as every step averages the trainable gradients (`all_reduce_gradients`).
    """
    if not dist.is_initialized():
        raise RuntimeError("fsdp=True needs torch.distributed initialised (gloo on CPU, nccl on GPU)")
    if mixed_precision_policy(device_type, mixed_precision).param_dtype != torch.bfloat16:
        return None
    if not base_trained:
        for name, param in model.named_parameters():
            if not is_lora(name):
                param.data = param.data.to(torch.bfloat16)
    return torch.bfloat16


def all_reduce_gradients(params: list[torch.Tensor], world: int, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replace each parameter's gradient by its mean over ranks (a missing gradient counts as zero), in flat
    buckets of about `bucket_bytes`: what FSDP's reduce-scatter averages, for replicated parameters."""
    bucket: list[torch.Tensor] = []
    size = 0
    for i, param in enumerate(params):
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        bucket.append(param)
        size += param.grad.numel() * param.grad.element_size()
        if size >= bucket_bytes or i == len(params) - 1:
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            flat.div_(world)
            for p, chunk in zip(bucket, flat.split([p.grad.numel() for p in bucket])):
                p.grad.copy_(chunk.view_as(p.grad))
            bucket, size = [], 0


def fsdp_root(model: PeftModel) -> FSDPModule | None:
    root = model.get_base_model()
    return root if isinstance(root, FSDPModule) else None


def gather_full_state(model: nn.Module, include: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU copies of the parameters whose name passes `include`, on rank 0.

    Collective under FSDP (every rank must call it); other ranks get {}. Uses torch's
    `get_model_state_dict(full_state_dict, cpu_offload)`; `ignore_frozen_params` does the
    selection, so requires_grad is set to `include` for the call and restored after.
    """
    flags = [(name, p, p.requires_grad) for name, p in model.named_parameters()]
    try:
        for name, p, _ in flags:
            p.requires_grad_(include(name))
        state = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
    finally:
        for _, p, flag in flags:
            p.requires_grad_(flag)
    # without FSDP the "gathered" tensors ARE the parameters: copy, so callers hold a snapshot
    return {k: v.detach().clone() for k, v in state.items() if include(k)}
