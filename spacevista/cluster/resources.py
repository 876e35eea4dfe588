"""Resources per role (rollout, reward, learner) -> placement groups, checked before any actor starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from spacevista.configs.schema import ClusterConfig, RoleConfig

ROLES = ("rollout", "reward", "learner")


class ResourceError(RuntimeError):
    """The cluster cannot hold what the config asks for; the message says what is missing."""


def role_configs(cluster: ClusterConfig) -> dict[str, RoleConfig]:
    return {"rollout": cluster.rollout, "reward": cluster.reward, "learner": cluster.learner}


def bundle(role: RoleConfig) -> dict[str, float]:
    b = {"CPU": float(role.num_cpus)}
    if role.num_gpus > 0:
        b["GPU"] = float(role.num_gpus)
    return b


def demand(roles: Mapping[str, RoleConfig]) -> dict[str, float]:
    total: dict[str, float] = {}
    for role in roles.values():
        for k, v in bundle(role).items():
            total[k] = total.get(k, 0.0) + v * role.count
    return total


def check_fits(roles: Mapping[str, RoleConfig], available: Mapping[str, float],
               node_capacities: list[Mapping[str, float]]) -> None:
    """Raise ResourceError naming every shortfall (totals and per-bundle node fit)."""
    problems = []
    for name, role in roles.items():
        if role.count < 1:
            problems.append(f"{name}.count must be >= 1, got {role.count}")
    need = demand(roles)
    for res, amount in sorted(need.items()):
        have = float(available.get(res, 0.0))
        if amount > have + 1e-9:
            parts = ", ".join(f"{n} {r.count} x {bundle(r).get(res, 0):g}" for n, r in roles.items()
                              if bundle(r).get(res, 0) > 0)
            problems.append(f"need {amount:g} {res} ({parts}) but the cluster has {have:g}")
    for name, role in roles.items():
        b = bundle(role)
        if node_capacities and not any(all(cap.get(k, 0.0) >= v for k, v in b.items()) for cap in node_capacities):
            problems.append(f"no node can hold one {name} worker ({b})")
    if problems:
        raise ResourceError("cluster too small for this config: " + "; ".join(problems)
                            + ". Lower cluster.<role>.count / num_gpus / num_cpus, or add nodes.")


def check_cluster(cluster: ClusterConfig) -> None:
    """Check the connected Ray cluster against the config (call after ray.init, before actors)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    check_fits(role_configs(cluster), ray.available_resources(), nodes)


@dataclass
class RoleGroup:
    """A role's placement group and how to schedule its i-th actor into it."""

    name: str
    config: RoleConfig
    pg: PlacementGroup

    def options(self, index: int, run_name: str) -> dict:
        return dict(
            name=f"{run_name}:{self.name}-{index}",
            num_cpus=self.config.num_cpus,
            num_gpus=self.config.num_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=index),
        )


def reserve(name: str, role: RoleConfig, timeout_s: float = 120.0) -> RoleGroup:
    """Create and wait for the role's placement group (one bundle per worker)."""
    pg = placement_group([bundle(role)] * role.count, strategy=role.strategy, name=f"spacevista-{name}")
    if not pg.wait(timeout_s):
        remove_placement_group(pg)
        raise ResourceError(f"placement group for {name} ({role.count} x {bundle(role)}, {role.strategy}) "
                            f"not ready after {timeout_s:.0f}s")
    return RoleGroup(name, role, pg)
