"""Evaluation generation on several Ray rollout workers (the training's `RolloutWorker` actors).

Each `generate` call splits its requests evenly over the workers, in order; every worker applies the
checkpoint's expert weights before its first batch. Ray is started locally unless this process is
already connected to a cluster, and stopped again by `close` if it was started here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray
import torch

from spacevista.actors.pool import split_even
from spacevista.actors.setup import start_ray
from spacevista.actors.workers import RolloutWorker
from spacevista.configs.schema import ClusterConfig, ModelConfig, RolloutConfig
from spacevista.rollout.engine import Completion, GenerationRequest, SamplingParams

WEIGHTS_VERSION = 1  # workers start at version 0 (fresh experts) and take the checkpoint's as version 1


class RayRollout:
    """`workers` rollout actors serving the same experts."""

    def __init__(self, workers: int, model_path: Path, model: ModelConfig, rollout: RolloutConfig,
                 weights: Mapping[str, Mapping[str, torch.Tensor]]):
        self._owns_ray = start_ray(ClusterConfig(), Path.cwd())
        gpus = min(1.0, torch.cuda.device_count() / workers)
        self.actors = [RolloutWorker.options(name=f"eval-rollout-{os.getpid()}-{i}", num_cpus=1, num_gpus=gpus)
                       .remote(str(model_path), model, rollout) for i in range(workers)]
        self.experts = {e: (WEIGHTS_VERSION, ray.put(dict(sd))) for e, sd in weights.items()}

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        chunks = [c for c in split_even(list(requests), len(self.actors)) if c]
        refs = [actor.generate.remote(chunk, params, WEIGHTS_VERSION, self.experts)
                for actor, chunk in zip(self.actors, chunks)]
        return [c for part in ray.get(refs) for c in part]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self._owns_ray:
            ray.shutdown()
