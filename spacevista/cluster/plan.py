"""GPU memory per role and per GPU, from a model's `config.json` (no weights) and the batch shape.

Pure arithmetic, no torch: `spacevista plan` prints it, and a job that asks for GPUs is refused before
it starts when a part cannot fit (`check_plan`). Figures are worst cases at the configured maxima
(longest prompt, longest response), in bytes, for what our code does:

- learner (FSDP2 over its ranks, one GPU each): the base weights as the learner loads them (fp32,
  sharded), the layers gathered for compute (bf16 under mixed precision: the root plus two layers,
  one prefetched), the experts' LoRA weights + gradients + AdamW moments (fp32, sharded), and for one
  micro-batch: the layer activations (all layers, or only each layer's input with gradient
  checkpointing plus one layer being recomputed), the shared prompts' keys/values repeated per sample,
  the response logits (bf16, an fp32 copy, the log-softmax), the frozen vision tower one block at a time;
- rollout with vLLM: weights (model dtype, split over tensor parallel ranks), one LoRA slot per expert,
  a fixed allowance for activations and CUDA graphs, and what is left of `gpu_memory_utilization` for
  the KV cache: it must hold one longest sequence (vLLM refuses to start otherwise); how many of the
  step's sequences it holds at once is reported (prefix caching: the n samples share their prompt);
- rollout with the transformers engine: weights, experts, the KV cache of a `max_batch_size` batch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024 ** 3
REPLICATE_SHARE = 0.9  # learner.shard_base auto: replicate the base when that plan fits this share of a GPU
CUDA_OVERHEAD = int(1.5 * GIB)  # CUDA context, NCCL buffers, allocator slack: per process
VLLM_OVERHEAD = 2 * GIB  # vLLM's activation peak for a prefill chunk, CUDA graphs, the vision encoder's working set
LOGIT_BYTES = 2 + 4 + 4 + 4  # bf16 logits, fp32 copy, divided by the temperature, log-softmax kept for backward


class PlanError(ValueError):
    """A plan that cannot fit; the message names the role, the part and what to change."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2-VL / Qwen2.5-VL model that memory depends on."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_out: int
    vision_gated: bool  # Qwen2.5-VL: SwiGLU MLP and RMSNorm; Qwen2-VL: GELU MLP and LayerNorm
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    in_channels: int = 3

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a config.json dict: transformers 5 (`text_config`) or 4 (text keys at the top) layout."""
        text = config.get("text_config") or config
        vision = config["vision_config"]
        qwen2_vl = "embed_dim" in vision  # Qwen2-VL: embed_dim is the tower's width, hidden_size its output
        width = vision["embed_dim"] if qwen2_vl else vision["hidden_size"]
        return cls(
            hidden=text["hidden_size"], layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
            kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
            intermediate=text["intermediate_size"], vocab=text.get("vocab_size", config.get("vocab_size")),
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            vision_depth=vision["depth"], vision_hidden=width,
            vision_intermediate=int(width * vision.get("mlp_ratio", 4)) if qwen2_vl else vision["intermediate_size"],
            vision_out=vision["hidden_size"] if qwen2_vl else vision.get("out_hidden_size", text["hidden_size"]),
            vision_gated=not qwen2_vl, patch=vision.get("patch_size", 14),
            temporal_patch=vision.get("temporal_patch_size", 2), merge=vision.get("spatial_merge_size", 2),
            in_channels=vision.get("in_channels", vision.get("in_chans", 3)))

    @classmethod
    def from_path(cls, path: str | Path) -> ModelShape:
        """From a model directory or its config.json."""
        path = Path(path)
        return cls.from_config(json.loads((path / "config.json" if path.is_dir() else path).read_text()))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def layer_params(self) -> int:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v with bias; o without
        return attention + 3 * h * i + 2 * h  # gate/up/down, two RMSNorms

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden  # + final norm

    def vision_block_params(self) -> int:
        w, i = self.vision_hidden, self.vision_intermediate
        norms = 2 * w * (1 if self.vision_gated else 2)
        mlp = 2 * (w * i + i) + (i * w + w) if self.vision_gated else (w * i + i) + (i * w + w)
        return norms + (w * 3 * w + 3 * w) + (w * w + w) + mlp

    def vision_root_params(self) -> int:
        """Patch embedding + the merger (the tower's parameters outside its blocks)."""
        w, m = self.vision_hidden, self.vision_hidden * self.merge ** 2
        patch_embed = self.in_channels * self.temporal_patch * self.patch ** 2 * w
        return patch_embed + w * (1 if self.vision_gated else 2) + (m * m + m) + (m * self.vision_out + self.vision_out)

    def params(self) -> int:
        return (self.layers * self.layer_params() + self.embedding_params()
                + self.vision_depth * self.vision_block_params() + self.vision_root_params())

    def lora_params(self, rank: int) -> int:
        """One expert: LoRA A and B on q, k, v, o, gate, up, down of every language-model layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        per_layer = rank * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
        return self.layers * per_layer

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def visual_tokens(self, frames: int, height: int, width: int) -> int:
        """Tokens one video (or, frames=1, one image) becomes: frames in pairs, 28x28 pixels a token
        (sizes rounded to multiples of patch*merge, as Qwen's processor resizes)."""
        unit = self.patch * self.merge
        return (max(1, math.ceil(frames / self.temporal_patch)) * max(1, round(height / unit))
                * max(1, round(width / unit)))


@dataclass(frozen=True)
class BatchShape:
    prompts_per_step: int
    n: int  # samples per prompt
    prompt_tokens: int  # longest prompt, visual tokens included
    response_tokens: int  # longest response
    micro_batch: int  # learner rows per micro-batch
    max_tokens_per_micro_batch: int = 0  # > 0: token budget instead of rows
    visual_tokens: int = 0  # of the prompt tokens, those from frames (the vision tower sees 4x as many patches)


@dataclass(frozen=True)
class LearnerSettings:
    ranks: int
    experts: int
    lora_rank: int
    gradient_checkpointing: bool = False
    share_prompts: bool = True
    mixed_precision: bool = True  # bf16 compute (FSDP2 on CUDA); False: fp32
    full_params: bool = False  # the base trains too (full SFT): its gradients and AdamW moments
    master_bytes: int = 4  # the learner loads fp32 weights
    shard_base: bool = True  # FSDP2 shards the base; False: replicated (bf16 under mixed precision unless trained)


@dataclass(frozen=True)
class RolloutSettings:
    engines: int
    engine: str = "vllm"  # vllm | hf
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    prefix_caching: bool = True
    dtype_bytes: int = 2
    max_batch_size: int = 64  # hf engine


@dataclass
class RolePlan:
    role: str
    gpus: int
    parts: dict[str, int] = field(default_factory=dict)  # bytes per GPU
    budget: int = 0  # bytes per GPU it may use
    notes: list[str] = field(default_factory=list)
    must_fit: dict[str, tuple[int, int]] = field(default_factory=dict)  # part -> (need, have): extra conditions

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def problems(self) -> list[str]:
        out = []
        if self.total > self.budget:
            top = ", ".join(f"{k} {v / GIB:.1f}" for k, v in sorted(self.parts.items(), key=lambda kv: -kv[1])[:3])
            out.append(f"{self.role}: {self.total / GIB:.1f} GiB per GPU exceeds {self.budget / GIB:.1f} GiB "
                       f"(largest parts, GiB: {top})")
        for part, (need, have) in self.must_fit.items():
            if need > have:
                out.append(f"{self.role}: {part} needs {need / GIB:.2f} GiB but {have / GIB:.2f} GiB is left for it")
        return out


def learner_plan(model: ModelShape, batch: BatchShape, cfg: LearnerSettings, gpu_bytes: int) -> RolePlan:
    """Per learner GPU (see the module doc for what each part holds)."""
    plan = RolePlan("learner", cfg.ranks, budget=gpu_bytes)
    compute = 2 if cfg.mixed_precision else 4
    params = model.params()
    lora = cfg.experts * model.lora_params(cfg.lora_rank)
    shards = cfg.ranks if cfg.shard_base else 1  # what a rank holds of the sharded parts: 1/ranks, or all of it
    if cfg.shard_base:
        plan.parts["weights (sharded)"] = params * cfg.master_bytes // cfg.ranks
        largest_unit = max(model.layer_params(), model.vision_block_params())
        plan.parts["weights gathered for compute"] = (model.embedding_params() + model.vision_root_params()
                                                      + 2 * largest_unit) * compute
    else:
        frozen_bytes = cfg.master_bytes if cfg.full_params else compute
        plan.parts["weights (replicated)"] = params * frozen_bytes
    plan.parts["LoRA weights+grads+AdamW"] = lora * (4 + 4 + 8) // shards
    if cfg.full_params:
        plan.parts["base grads+AdamW (full params)"] = params * (4 + 8) // shards
    rows, prompts, tokens = micro_batch_tokens(batch, cfg.ranks, cfg.share_prompts)
    h, kv, i = model.hidden, model.kv_dim, model.intermediate
    per_token_layer = compute * (6 * h + 4 * kv + 4 * i) + 8 * h  # see activation_bytes_per_token
    if cfg.gradient_checkpointing:
        plan.parts["activations"] = model.layers * tokens * h * compute + tokens * per_token_layer
    else:
        plan.parts["activations"] = model.layers * tokens * per_token_layer
    if cfg.share_prompts:
        plan.parts["prompt keys/values per sample"] = rows * batch.prompt_tokens * model.kv_bytes_per_token(compute)
    plan.parts["logits"] = rows * batch.response_tokens * model.vocab * LOGIT_BYTES
    patches = prompts * batch.visual_tokens * model.merge ** 2
    w, vi = model.vision_hidden, model.vision_intermediate
    plan.parts["vision tower (one block)"] = patches * compute * (6 * w + 4 * w + 4 * vi)
    plan.parts["CUDA context and buffers"] = CUDA_OVERHEAD
    plan.notes.append(f"micro-batch: {rows} rows, {prompts} distinct prompts, {tokens:,} tokens through the layers")
    return plan


def micro_batch_tokens(batch: BatchShape, ranks: int, share_prompts: bool) -> tuple[int, int, int]:
    """(rows, distinct prompts, tokens through the layers) of the largest micro-batch on one rank."""
    p, r, n, budget = batch.prompt_tokens, batch.response_tokens, batch.n, batch.max_tokens_per_micro_batch
    rows_per_rank = max(1, math.ceil(batch.prompts_per_step * n / ranks))
    if not budget:
        rows = min(batch.micro_batch, rows_per_rank)
        prompts = math.ceil(rows / n) if share_prompts else rows  # a prompt's samples are consecutive
    elif not share_prompts:
        rows = prompts = min(max(1, budget // (p + r)), rows_per_rank)
    elif budget >= p + n * r:  # whole prompt groups
        prompts = min(budget // (p + n * r), math.ceil(rows_per_rank / n))
        rows = min(prompts * n, rows_per_rank)
    else:  # a group cut into chunks, each with its own prompt pass
        rows, prompts = min(max(1, (budget - p) // r), rows_per_rank), 1
    tokens = prompts * p + rows * r if share_prompts else rows * (p + r)
    return rows, prompts, tokens


def rollout_plan(model: ModelShape, batch: BatchShape, cfg: RolloutSettings, experts: int, lora_rank: int,
                 gpu_bytes: int) -> RolePlan:
    """Per rollout GPU: vLLM within `gpu_memory_utilization`, or the transformers engine."""
    tp = cfg.tensor_parallel_size
    plan = RolePlan("rollout", cfg.engines * tp)
    plan.parts["weights"] = model.params() * cfg.dtype_bytes // tp
    plan.parts["LoRA slots"] = experts * model.lora_params(lora_rank) * cfg.dtype_bytes // tp
    seq = batch.prompt_tokens + batch.response_tokens
    kv_token = model.kv_bytes_per_token(cfg.dtype_bytes) // tp
    prompts = math.ceil(batch.prompts_per_step / cfg.engines)
    if cfg.engine == "hf":
        plan.budget = gpu_bytes
        plan.parts["KV cache"] = min(prompts * batch.n, cfg.max_batch_size) * seq * kv_token
        plan.parts["logits (one step)"] = min(prompts * batch.n, cfg.max_batch_size) * model.vocab * 4
        plan.parts["CUDA context and buffers"] = CUDA_OVERHEAD
        return plan
    plan.budget = int(cfg.gpu_memory_utilization * gpu_bytes)
    plan.parts["activations, CUDA graphs, encoder"] = VLLM_OVERHEAD
    left = plan.budget - plan.total
    plan.parts["KV cache"] = max(left, 0)
    plan.must_fit["KV cache for one longest sequence"] = (seq * kv_token, left)
    per_prompt = (batch.prompt_tokens + batch.n * batch.response_tokens if cfg.prefix_caching else batch.n * seq)
    wanted = min(prompts * batch.n, cfg.max_num_seqs)
    held = min(wanted, int(max(left, 0) // (per_prompt * kv_token / batch.n)) if left > 0 else 0)
    plan.notes.append(f"KV cache holds {held} of the {wanted} sequences an engine runs at once "
                      f"({prompts} prompts x n={batch.n}, prefix caching {'on' if cfg.prefix_caching else 'off'})")
    return plan


def format_plan(plans: list[RolePlan]) -> str:
    lines = []
    for plan in plans:
        verdict = "fits" if not plan.problems() else "DOES NOT FIT"
        lines.append(f"{plan.role}: {plan.gpus} GPU(s), per GPU {plan.total / GIB:.1f} of {plan.budget / GIB:.1f} GiB"
                     f" -> {verdict}")
        lines += [f"  {k:<36} {v / GIB:8.2f} GiB" for k, v in plan.parts.items()]
        lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def check_plans(plans: list[RolePlan]) -> None:
    """Raise PlanError naming every part that cannot fit."""
    problems = [p for plan in plans for p in plan.problems()]
    if problems:
        raise PlanError("this plan cannot fit:\n  " + "\n  ".join(problems) + "\n  (raise learner.count, turn on "
                        "learner.gradient_checkpointing, lower learner.micro_batch_size or set "
                        "learner.max_tokens_per_micro_batch, shorten prompts/responses, or raise "
                        "rollout.tensor_parallel_size)")


def _batch_shape(cfg: Any, prompt_tokens: int | None = None, visual_tokens: int | None = None) -> BatchShape:
    rollout, learner = cfg.rollout, cfg.learner
    prompt = prompt_tokens or rollout.max_model_len - rollout.max_tokens
    return BatchShape(rollout.prompts_per_step, rollout.n, prompt, rollout.max_tokens, learner.micro_batch_size,
                      learner.max_tokens_per_micro_batch, prompt if visual_tokens is None else visual_tokens)


def _learner_settings(cfg: Any, shard_base: bool) -> LearnerSettings:
    learner = cfg.learner
    return LearnerSettings(
        ranks=cfg.cluster.learner.count, experts=len(set(cfg.model.experts)), lora_rank=cfg.model.lora.rank,
        gradient_checkpointing=learner.gradient_checkpointing, share_prompts=learner.share_prompts,
        mixed_precision=learner.mixed_precision != "fp32" and (learner.mixed_precision == "bf16"
                                                               or cfg.cluster.learner.num_gpus > 0),
        full_params=learner.sft.full_params and learner.sft.steps > 0, shard_base=shard_base)


def shard_base_plans(cfg: Any, model: ModelShape, gpu_bytes: int, batch: BatchShape | None = None
                     ) -> tuple[bool, RolePlan, RolePlan]:
    """(shard the base?, the replicated plan, the sharded plan) per learner GPU. `learner.shard_base` decides
    when set; auto (None) replicates when the replicated plan fits `REPLICATE_SHARE` of each learner GPU or,
    on CPUs, when every rank's replica fits in half the host's memory together."""
    batch = batch or _batch_shape(cfg)
    replicated, sharded = (learner_plan(model, batch, _learner_settings(cfg, shard), gpu_bytes)
                           for shard in (False, True))
    if cfg.learner.shard_base is not None:
        return bool(cfg.learner.shard_base), replicated, sharded
    if cfg.cluster.learner.num_gpus > 0:
        return replicated.total > REPLICATE_SHARE * gpu_bytes, replicated, sharded
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return replicated.parts["weights (replicated)"] * cfg.cluster.learner.count > host // 2, replicated, sharded


def resolve_shard_base(cfg: Any, model_path: str | Path) -> bool:
    """`learner.shard_base`, auto resolved from the model's config.json (see `shard_base_plans`)."""
    if cfg.learner.shard_base is not None:
        return bool(cfg.learner.shard_base)
    return shard_base_plans(cfg, ModelShape.from_path(model_path), int(cfg.cluster.gpu_memory_gib * GIB))[0]


def plan_for_config(cfg: Any, model: ModelShape, gpu_bytes: int, prompt_tokens: int | None = None,
                    visual_tokens: int | None = None) -> list[RolePlan]:
    """Plans of the GPU roles of a `TrainConfig`. Without `prompt_tokens`, the longest prompt the
    rollout admits (max_model_len - max_tokens), every token of it visual (the worst case)."""
    rollout, cluster = cfg.rollout, cfg.cluster
    batch = _batch_shape(cfg, prompt_tokens, visual_tokens)
    experts = len(set(cfg.model.experts))
    plans = []
    if cluster.learner.num_gpus > 0:
        shard, replicated, sharded = shard_base_plans(cfg, model, gpu_bytes, batch)
        plan, other = (sharded, replicated) if shard else (replicated, sharded)
        how = {True: "sharded by FSDP2", False: "replicated"}
        setting = "auto" if cfg.learner.shard_base is None else str(cfg.learner.shard_base).lower()
        plan.notes.append(f"base {how[shard]} (learner.shard_base={setting}); "
                          f"{how[not shard]} it would take {other.total / GIB:.1f} GiB per GPU")
        plans.append(plan)
    if cluster.rollout.num_gpus > 0:
        tp = rollout.tensor_parallel_size
        plans.append(rollout_plan(model, batch, RolloutSettings(
            engines=cluster.rollout.count, engine=rollout.engine, tensor_parallel_size=tp,
            gpu_memory_utilization=rollout.gpu_memory_utilization, max_num_seqs=rollout.max_num_seqs,
            prefix_caching=rollout.enable_prefix_caching, dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
            max_batch_size=rollout.max_batch_size), experts, cfg.model.lora.rank, gpu_bytes))
    return plans


def check_before_training(cfg: Any, model_path: str | Path) -> list[RolePlan]:
    """Refuse (PlanError) a job whose GPU roles cannot fit `cluster.gpu_memory_gib` per GPU; [] when
    no role asks for a GPU. Call it after the policy directory exists, before any actor starts."""
    if not (cfg.cluster.learner.num_gpus > 0 or cfg.cluster.rollout.num_gpus > 0):
        return []
    plans = plan_for_config(cfg, ModelShape.from_path(model_path), int(cfg.cluster.gpu_memory_gib * GIB))
    check_plans(plans)
    return plans
