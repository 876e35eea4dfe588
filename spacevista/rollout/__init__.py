"""Rollout: routed multi-expert generation (transformers+peft or vLLM) with versioned adapters.

A RolloutWorker builds its engine with `make_engine(cfg.rollout, model_path, cfg.model)`, then calls
`engine.generate(requests, SamplingParams(...))` and `engine.update_experts(version, weights)`.
"""

from spacevista.rollout.engine import BASE_EXPERT, Completion, Engine, GenerationRequest, SamplingParams
from spacevista.rollout.factory import make_engine

__all__ = ["BASE_EXPERT", "Completion", "Engine", "GenerationRequest", "SamplingParams", "make_engine"]
