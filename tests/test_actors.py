"""Worker pools on a real local Ray: results in order, and a crashed worker's in-flight work retried."""

from __future__ import annotations

import pytest
import ray

from spacevista.actors.pool import WorkerPool, split_even
from spacevista.cluster.resources import ResourceError, check_fits, reserve
from spacevista.configs.schema import PluginConfig, RewardConfig, RewardWeights, RoleConfig

pytestmark = pytest.mark.slow

WEIGHTS = RewardWeights(format=0.2, scale=0.3, accuracy=0.5)

CRASH_ONCE = '''
import os
from pathlib import Path

MARKER = Path({marker!r})


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if not MARKER.exists():
        MARKER.write_text("crashed once")
        os._exit(1)  # the worker process dies mid-call
    return 1.0
'''

def items(n: int) -> list[tuple]:
    truth = {"type": "numeric", "value": 2.0, "unit": "m", "choices": None, "scale": "indoor", "task": "object_size"}
    good = "<think>floor tiles</think><scale>indoor</scale><answer>2 m</answer>"
    return [(truth, good if i % 2 else "garbage", "synthetic", None) for i in range(n)]


def test_split_even_keeps_order_and_balances():
    parts = split_even(list(range(7)), 3)
    assert [x for p in parts for x in p] == list(range(7)) and sorted(map(len, parts)) == [2, 2, 3]


def test_reward_pool_scores_in_input_order(local_ray):
    pool = WorkerPool.reward(RewardConfig(), reserve("reward", RoleConfig(count=2, num_cpus=0.25)), "t")
    try:
        out = pool.score(items(9), WEIGHTS)
        assert [b.total for b in out] == [0.0 if i % 2 == 0 else 1.0 for i in range(9)]
    finally:
        pool.shutdown()


def test_a_crashed_reward_worker_restarts_and_its_work_is_retried(local_ray, tmp_path):
    plugin = tmp_path / "crash_once.py"
    plugin.write_text(CRASH_ONCE.format(marker=str(tmp_path / "marker")))
    # in-process (trusted) plugins take the worker down with them; isolated ones (the default) do not
    config = RewardConfig(plugins=[PluginConfig(f"{plugin}:compute_score")], isolate_plugins=False)
    pool = WorkerPool.reward(config, reserve("reward", RoleConfig(count=1, num_cpus=0.25, max_restarts=2)), "t")
    try:
        first_pid = ray.get(pool.actors[0].ping.remote())
        out = pool.score(items(4), WEIGHTS)
        assert len(out) == 4 and (tmp_path / "marker").exists()  # it did crash, and nothing was lost
        assert all(b.error is None for b in out)
        assert ray.get(pool.actors[0].ping.remote()) != first_pid  # a new process took over
    finally:
        pool.shutdown()


def test_too_many_gpus_fails_naming_what_is_missing():
    roles = {"rollout": RoleConfig(count=4, num_gpus=1), "reward": RoleConfig(count=1),
             "learner": RoleConfig(count=2, num_gpus=1)}
    with pytest.raises(ResourceError) as err:
        check_fits(roles, {"CPU": 8.0}, [{"CPU": 8.0}])
    msg = str(err.value)
    assert "need 6 GPU (rollout 4 x 1, learner 2 x 1) but the cluster has 0" in msg
    assert "no node can hold one rollout worker" in msg


REGISTERED = '''
from spacevista.rewards import register_reward


@register_reward("length_bonus")
def length_bonus(data_source, solution_str, ground_truth, extra_info=None):
    return min(1.0, len(solution_str) / 100)
'''


def test_a_plugin_registered_in_the_driver_reaches_the_reward_workers(local_ray, tmp_path, monkeypatch):
    """The module lives where the workers cannot import it: the function travels by value."""
    import importlib

    from spacevista.preflight import registered_plugins

    (tmp_path / "driver_rewards.py").write_text(REGISTERED)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("driver_rewards")
    reward = RewardConfig(plugins=[PluginConfig(spec="length_bonus", weight=1.0)])
    shipped = registered_plugins(reward)
    assert list(shipped) == ["length_bonus"]
    pool = WorkerPool.reward(reward, reserve("reward", RoleConfig(count=1, num_cpus=0.25)), "t", shipped)
    try:
        out = pool.score(items(2), WEIGHTS)
        assert [b.components["length_bonus"] for b in out] == [min(1.0, len(c) / 100) for _, c, _, _ in items(2)]
    finally:
        pool.shutdown()
