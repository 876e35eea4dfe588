"""The Ray a run uses: a cluster at `cluster.address`, or a local head bound to loopback (127.0.0.1 only:
GCS, raylet, workers, agents and the metrics endpoint), Ray's token auth left on (its default) and its token
file made private."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from spacevista.cluster.submit import protect_token_file
from spacevista.configs.schema import ClusterConfig


def start_ray(cluster: ClusterConfig, run_dir: Path) -> bool:
    """Connect to `cluster.address`, or start a local Ray bound to loopback; True when this process started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=True)
        return True
    kwargs: dict[str, Any] = dict(address="local", num_cpus=cluster.num_cpus or os.cpu_count(),
                                  include_dashboard=cluster.dashboard, log_to_driver=True,
                                  _node_ip_address="127.0.0.1")
    if cluster.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if cluster.temp_dir:
        kwargs["_temp_dir"] = str(Path(cluster.temp_dir).expanduser())
    with loopback_node_ip():
        ray.init(**kwargs)
    protect_token_file()
    return True


@contextlib.contextmanager
def loopback_node_ip() -> Iterator[None]:
    """Make a local Ray take 127.0.0.1 as its node address, so that GCS, raylet, workers, agents and the
    metrics endpoint bind loopback only. Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's
    routable address unless its cluster mode is off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read once
    when Ray is imported, hence the module constant too); both are restored after `ray.init`."""
    from ray._private import ray_constants

    key, saved_env = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env
