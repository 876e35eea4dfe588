"""Rollout and reward workers: thin Ray actors around an Engine and a RewardPipeline.

Both are restart-safe: Ray restarts a crashed worker (`max_restarts`) and re-runs the call that was
in flight (`max_task_retries`). A rollout worker that restarted has lost its adapter weights, so
every `generate` call carries a reference to the latest weights and the worker applies them when
its own version is older; a reward worker gets the stage's weights with each call. No call
depends on state a restart would lose.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from spacevista.configs.schema import ModelConfig, RolloutConfig


def init_actor_process() -> None:
    """Per-process setup for every worker: torch threads from the CPUs Ray gave it; quiet loaders."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, int(float(os.environ.get("SPACEVISTA_ACTOR_THREADS", "1")))))
    hf_logging.disable_progress_bar()


@ray.remote
class RolloutWorker:
    """Holds one generation engine (HF or vLLM) with every scale expert loaded."""

    def __init__(self, model_path: str, model: ModelConfig, rollout: RolloutConfig):
        init_actor_process()
        from spacevista.rollout import make_engine

        self.engine = make_engine(rollout, model_path, model)
        self.expert_versions: dict[str, int] = {}

    def generate(self, requests: list, params: Any, version: int = 0,
                 experts: dict[str, tuple[int, ray.ObjectRef]] | None = None) -> list:
        """Generate with adapter `version`. `experts` maps each expert to (its version, a ref to its
        adapter state dict); refs nested in a dict are not fetched by Ray, so this worker pulls only
        the experts it is behind on (all of them after a restart) and applies them atomically."""
        behind = {e: ref for e, (v, ref) in (experts or {}).items() if v > self.expert_versions.get(e, 0)}
        if behind:
            weights = dict(zip(behind, ray.get(list(behind.values()))))
            self.engine.update_experts(version, weights)
            for e in behind:
                self.expert_versions[e] = experts[e][0]
        return self.engine.generate(requests, params)

    def version(self) -> int:
        return self.engine.version

    def ping(self) -> int:
        return os.getpid()


@ray.remote
class RewardWorker:
    """Holds the reward pipeline (stepwise reward + plugins); stateless between calls."""

    def __init__(self, reward_config: dict[str, Any]):
        from spacevista.rewards.pipeline import RewardPipeline

        self.pipeline = RewardPipeline(reward_config)  # a plugin that fails to import fails here, at start

    def score(self, items: list, weights: Any = None) -> list:
        if weights is not None:
            self.pipeline.set_weights(weights)
        return self.pipeline.score_batch(items)

    def ping(self) -> int:
        return os.getpid()
