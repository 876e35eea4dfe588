"""Ray workers take their thread count and OS niceness from their role's config (not Ray's default
worker niceness, 15, which yields to every other process on the machine)."""

from __future__ import annotations

import os

import ray
import torch

from spacevista.actors.pool import actor_options
from spacevista.actors.workers import init_actor_process
from spacevista.cluster.resources import reserve
from spacevista.configs.schema import RoleConfig


@ray.remote
class Probe:
    def __init__(self) -> None:
        init_actor_process()

    def state(self) -> tuple[int, int]:
        return torch.get_num_threads(), os.nice(0)


def _probe(role: RoleConfig) -> tuple[int, int]:
    group = reserve("probe", role)
    try:
        actor = Probe.options(**actor_options(group, 0, f"nice-{role.nice}")).remote()
        state = ray.get(actor.state.remote(), timeout=120)
        ray.kill(actor)
        return state
    finally:
        ray.util.remove_placement_group(group.pg)


def test_workers_run_at_the_roles_niceness_and_thread_count(local_ray) -> None:
    base = os.nice(0)  # the local Ray node's processes inherit this process's niceness; workers add theirs
    assert _probe(RoleConfig(num_cpus=0.5)) == (1, base)  # at least one thread; the node's own priority
    assert _probe(RoleConfig(num_cpus=2.0, nice=7)) == (2, min(19, base + 7))
