"""Build the configured rollout engine: what a RolloutWorker calls in its constructor."""

from __future__ import annotations

import torch

from spacevista.configs.schema import ModelConfig, RolloutConfig
from spacevista.rollout.engine import Engine

# Both engines build on at least one LoRA adapter (peft wraps the model in one; vLLM's LoRA path needs a slot),
# so an engine of the base model alone (no experts: every request names BASE_EXPERT) holds one fresh adapter
# under this name, which no request names (BASE_EXPERT requests never use an adapter).
IDLE_ADAPTER = "__idle__"


def make_engine(rollout: RolloutConfig, model_path: str, model: ModelConfig) -> Engine:
    """The engine `rollout.engine` names ("hf" | "vllm") serving `model.experts` (none: the base model alone,
    for `BASE_EXPERT` requests); vLLM is imported only here.

    The HF engine runs on the GPU when this process sees one (a Ray actor does only if given one). With
    `model.dense.enabled` both compute the dense branch: HF natively, vLLM as fused visual embeddings.
    """
    experts = list(model.experts) or [IDLE_ADAPTER]
    if rollout.engine == "hf":
        from spacevista.rollout.hf_engine import HFEngine

        dtype = getattr(torch, model.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"model.dtype: {model.dtype!r} is not a torch dtype name")
        return HFEngine(model_path, experts, model.lora, dtype=dtype,
                        device="cuda" if torch.cuda.is_available() else "cpu",
                        max_batch_size=rollout.max_batch_size, dense=model.dense)
    if rollout.engine == "vllm":
        from spacevista.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, experts, model.lora, max_model_len=rollout.max_model_len,
                          dtype=model.dtype, max_num_seqs=rollout.max_num_seqs,
                          gpu_memory_utilization=rollout.gpu_memory_utilization,
                          tensor_parallel_size=rollout.tensor_parallel_size, enforce_eager=rollout.enforce_eager,
                          enable_prefix_caching=rollout.enable_prefix_caching, dense=model.dense)
    raise ValueError(f"rollout.engine: {rollout.engine!r} is not one of hf, vllm")
