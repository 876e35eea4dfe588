"""A role's workers (rollout or reward) in their placement group: fan a batch out, gather in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import remove_placement_group

from spacevista.actors.recovery import wait
from spacevista.actors.workers import RewardWorker, RolloutWorker
from spacevista.cluster.resources import RoleGroup
from spacevista.configs.schema import (ClusterConfig, ModelConfig, RewardConfig, RewardWeights, RoleConfig,
                                       RolloutConfig)
from spacevista.rollout.snapshot import PolicySnapshot


def actor_options(group: RoleGroup, index: int, run_name: str) -> dict[str, Any]:
    """Placement, name, restart policy, thread count and OS niceness for the index-th worker of a role.
    The niceness replaces Ray's default for workers (15, below every ordinary process): a worker process
    applies `RAY_worker_niceness` from its own environment as it starts, so no privilege is needed."""
    role: RoleConfig = group.config
    threads = max(1, int(round(role.num_cpus)))
    return dict(
        **group.options(index, run_name),
        max_restarts=role.max_restarts,
        max_task_retries=role.max_restarts,  # a call in flight when the worker died runs again after restart
        runtime_env={"env_vars": {"SPACEVISTA_ACTOR_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                                  "RAY_worker_niceness": str(role.nice), "TOKENIZERS_PARALLELISM": "false"}},
    )


def split_even(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Contiguous chunks whose sizes differ by at most one (order preserved when concatenated)."""
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


class WorkerPool:
    """Workers of one role. Calls go to all workers at once; results come back in input order, each
    call within `call_timeout_s` (a dead worker past its restarts, or a frozen one, raises RoleFailure)."""

    def __init__(self, role: str, actors: list, group: RoleGroup, call_timeout_s: float = 600.0,
                 start_timeout_s: float = 1800.0):
        self.role = role
        self.actors = actors
        self.group = group
        self.call_timeout_s = call_timeout_s
        try:  # fail fast (and here) if a worker cannot start
            wait([a.ping.remote() for a in actors], role, start_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    @classmethod
    def rollout(cls, model_path: str, model: ModelConfig, rollout: RolloutConfig, group: RoleGroup, run_name: str,
                cluster: ClusterConfig | None = None) -> WorkerPool:
        """Rollout workers serving `model.experts` of the policy at `model_path` (training's, and evaluation's)."""
        actors = [RolloutWorker.options(**actor_options(group, i, run_name)).remote(model_path, model, rollout)
                  for i in range(group.config.count)]
        cluster = cluster or ClusterConfig()
        return cls("rollout", actors, group, cluster.call_timeout_s, cluster.start_timeout_s)

    @classmethod
    def reward(cls, reward_config: RewardConfig, group: RoleGroup, run_name: str,
               registered: dict[str, Any] | None = None, cluster: ClusterConfig | None = None) -> WorkerPool:
        actors = [RewardWorker.options(**actor_options(group, i, run_name)).remote(reward_config, registered)
                  for i in range(group.config.count)]
        cluster = cluster or ClusterConfig()
        return cls("reward", actors, group, cluster.call_timeout_s, cluster.start_timeout_s)

    def _submit(self, method: str, items: Sequence[Any], *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        chunks = split_even(items, min(len(self.actors), max(1, len(items))))
        return [getattr(a, method).remote(chunk, *args, **kwargs) for a, chunk in zip(self.actors, chunks) if chunk]

    def gather(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """Results of submitted calls, concatenated in input order."""
        return [x for part in wait(refs, self.role, self.call_timeout_s) for x in part]

    def _fan_out(self, method: str, items: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return self.gather(self._submit(method, items, *args, **kwargs))

    def generate(self, items: Sequence[Any], params: Any, snapshot: PolicySnapshot,
                 prompts: str = "ref") -> list[Any]:
        """Completions of the `snapshot` policy, request-major, `params.n` per request (their prompts as
        object-store refs)."""
        return self._fan_out("generate", items, params, snapshot, prompts)

    def generate_async(self, items: Sequence[Any], params: Any, snapshot: PolicySnapshot) -> list[ray.ObjectRef]:
        """Start generating and return at once; `gather` the refs for the completions."""
        return self._submit("generate", items, params, snapshot)

    def encode(self, items: Sequence[Any]) -> list[Any]:
        """Refs of the items' encoded prompts, in order."""
        return self._fan_out("encode", items)

    def score(self, items: Sequence[Any], weights: RewardWeights,
              plugin_weights: dict[str, float] | None = None) -> list[Any]:
        """Reward breakdowns, in order, with these stepwise weights (and the stage's plugin weights)."""
        return self._fan_out("score", items, weights, plugin_weights)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.group.pg)
