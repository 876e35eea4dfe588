"""Evaluation generation on several Ray rollout workers: training's `WorkerPool` of `RolloutWorker`s.

The pool splits each `generate` call's requests evenly over the workers, in order, and gathers them
within the cluster's call deadline, naming a lost worker; every worker applies the checkpoint's expert
weights before its first batch. Ray is started locally unless this process is already connected to a
cluster, and stopped again by `close` if it was started here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray
import torch

from spacevista.actors.pool import WorkerPool
from spacevista.cluster.local_ray import start_ray
from spacevista.cluster.resources import ResourceError, reserve
from spacevista.configs.schema import ClusterConfig, ModelConfig, RoleConfig, RolloutConfig
from spacevista.eval.policy import EvalError
from spacevista.rollout.engine import Completion, GenerationRequest, SamplingParams
from spacevista.rollout.snapshot import PolicySnapshot



class RayRollout:
    """`workers` rollout actors serving the same experts, one CPU (and a share of the GPUs) each."""

    def __init__(
        self,
        workers: int,
        model_path: Path,
        model: ModelConfig,
        rollout: RolloutConfig,
        weights: Mapping[str, Mapping[str, torch.Tensor]],
        dense_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        cluster = ClusterConfig()
        self._owns_ray = start_ray(cluster, Path.cwd())
        role = RoleConfig(count=workers, num_cpus=1.0, num_gpus=min(1.0, torch.cuda.device_count() / workers))
        try:
            self.pool = WorkerPool.rollout(
                str(model_path), model, rollout, reserve("rollout", role), f"eval-{os.getpid()}", cluster
            )
        except ResourceError as err:
            self._stop_ray()
            raise EvalError(f"--workers {workers}: {err}") from None
        except BaseException:
            self._stop_ray()
            raise
        # the checkpoint's policy as one snapshot: each worker applies it (experts, dense fusion) before its first batch
        self.snapshot = PolicySnapshot(0, {e: (0, ray.put(dict(sd))) for e, sd in weights.items()},
                                       (0, ray.put(dict(dense_weights))) if dense_weights is not None else None)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        return self.pool.generate(list(requests), params, self.snapshot, prompts="drop")

    def close(self) -> None:
        try:
            self.pool.shutdown()
        finally:
            self._stop_ray()

    def _stop_ray(self) -> None:
        if self._owns_ray:
            ray.shutdown()
