"""Fault injection: a job heals itself. Each fault hits a short run on a real Ray cluster of ours (a head,
and for node loss a second node, both on 127.0.0.1 with their own temp dirs); the run completes
without a person and its final adapters equal an uninterrupted run's of the same seed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import ray
import torch

from raycluster import start_head, start_worker_node
from spacevista.actors.controller import run_training
from spacevista.actors.recovery import read_events
from spacevista.cluster.local_ray import loopback_node_ip
from spacevista.configs.loader import compose, to_train_config
from test_train_e2e import SHORT, VARIED_REWARD, expert_tensors

STEPS = 6
FAULTY = [f"steps={STEPS}", "checkpoint_every=2", "eval_every=0", "log.tensorboard=false", "log.plot=false",
          "log.ray_metrics=false",
          "cluster.learner.strategy=SPREAD"]  # one rank per node when there are two (one node holds all)
NODE_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",  # notice a lost node
            "RAY_health_check_timeout_ms": "1000",                                            # in seconds
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # keep 127.0.0.1 (see cluster.local_ray.loopback_node_ip)


@pytest.fixture(scope="module")
def head():
    """A head of our own (2 CPUs, no dashboard) with this process as its driver."""
    h = start_head(num_cpus=2, dashboard=False, env=NODE_ENV)
    try:
        with pytest.MonkeyPatch.context() as env:
            # A client given an address must ask for token auth itself; Ray reads RAY_AUTH_MODE into its
            # config when imported, and refreshes it as below when it turns token auth on for a local run.
            env.setenv("RAY_AUTH_MODE", "token")
            ray._raylet.Config.initialize("")
            with loopback_node_ip():
                ray.init(address=h.address, _node_ip_address="127.0.0.1", log_to_driver=False)
            yield h
    finally:
        ray.shutdown()
        ray._raylet.Config.initialize("")
        h.stop()


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("faults")
    plugin = root / "varied.py"
    plugin.write_text(VARIED_REWARD)
    return [*SHORT, *FAULTY, f"data.synth.cache_dir={root / 'data'}", f"model.cache_dir={root / 'models'}",
            f"reward.plugins=[{{spec: '{plugin}:compute_score', weight: 1.0}}]"]


def run(run_dir: Path, overrides: list[str], *extra: str):
    cfg = to_train_config(compose([*overrides, f"run_dir={run_dir}", *extra]))
    return run_training(cfg, run_dir)


@pytest.fixture(scope="module")
def uninterrupted(head, overrides, tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert run(run_dir, overrides).steps == STEPS
    assert read_events(run_dir) == []
    return expert_tensors(run_dir / "checkpoints" / f"step_{STEPS}")


class AfterCheckpoint(threading.Thread):
    """Injects a fault from its own thread once the run has committed checkpoint `step` (the run goes on)."""

    def __init__(self, run_dir: Path, step: int, fault: Callable[[], None], timeout_s: float = 600.0):
        super().__init__(daemon=True)
        self.marker = run_dir / "checkpoints" / f"step_{step}" / "COMPLETE"
        self.fault, self.timeout_s = fault, timeout_s
        self.error: BaseException | None = None
        self.done = False

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.marker.exists():
            if time.monotonic() > deadline:
                self.error = TimeoutError(f"{self.marker} never appeared")
                return
            time.sleep(0.05)
        try:
            self.fault()
            self.done = True
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err

    def check(self) -> None:
        self.join(timeout=60)
        assert self.error is None, f"the fault was not injected: {self.error!r}"
        assert self.done


def actor_pid(run_dir: Path, role_index: str, timeout_s: float = 300.0) -> int:
    """The pid of the run's actor `role-index` (e.g. learner-1), once it answers: after a restart too, and
    after a recovery that rebuilt the role (the old handle is then dead, and the name briefly unknown)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(ray.get_actor(f"{run_dir.name}:{role_index}").ping.remote(), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assert_healed(run_dir: Path, result, uninterrupted: dict[str, torch.Tensor], roles: set[str]) -> list[dict]:
    """The run ended at its last step, with one log row per step, each fault recovered (an event naming a
    role in `roles`), and its adapters equal the uninterrupted run's, tensor for tensor."""
    events = read_events(run_dir)
    recoveries = len(events)
    assert recoveries >= 1 and all(e["event"] == "recovery" for e in events), events
    assert {e["role"] for e in events} <= roles, events
    assert all(e["resume_step"] in (0, 2, 4) for e in events)
    assert result.steps == STEPS
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "a step logged twice, or missing"
    assert rows[-1]["faults/recoveries"] == recoveries
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS
    healed = expert_tensors(run_dir / "checkpoints" / f"step_{STEPS}")
    assert healed.keys() == uninterrupted.keys() and healed
    assert all(torch.equal(healed[k], uninterrupted[k]) for k in healed), "the healed run's adapters differ"
    return events


@pytest.mark.slow
def test_a_killed_learner_rank_is_rebuilt_and_the_run_continues_from_its_checkpoint(head, overrides, uninterrupted,
                                                                                    tmp_path):
    run_dir = tmp_path / "run"
    fault = AfterCheckpoint(run_dir, 2, lambda: os.kill(actor_pid(run_dir, "learner-1"), signal.SIGKILL))
    fault.start()
    result = run(run_dir, overrides)
    fault.check()
    assert len(assert_healed(run_dir, result, uninterrupted, {"learner"})) == 1


@pytest.mark.slow
def test_a_rollout_worker_killed_past_its_restarts_is_rebuilt(head, overrides, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"

    def kill_three_times() -> None:  # max_restarts=2: Ray restarts it twice (re-running its call), then it is lost
        pids = []
        for _ in range(3):
            pids.append(actor_pid(run_dir, "rollout-0"))
            os.kill(pids[-1], signal.SIGKILL)
        assert len(set(pids)) == 3

    fault = AfterCheckpoint(run_dir, 2, kill_three_times)
    fault.start()
    result = run(run_dir, overrides)
    fault.check()
    # the worker's third death is past its restarts; and an earlier one may already fail the learner, which
    # then cannot fetch a prompt that the dead worker owned (OwnerDiedError): either is a recovery
    events = assert_healed(run_dir, result, uninterrupted, {"rollout", "learner"})
    assert all("ActorDiedError" in e["error"] or "OwnerDiedError" in e["error"] for e in events), events


@pytest.mark.slow
def test_a_frozen_learner_rank_becomes_a_recovery_at_the_call_deadline(head, overrides, uninterrupted, tmp_path):
    run_dir, frozen = tmp_path / "run", []

    def freeze() -> None:
        frozen.append(psutil.Process(actor_pid(run_dir, "learner-0")))
        frozen[0].suspend()  # SIGSTOP

    fault = AfterCheckpoint(run_dir, 2, freeze)
    fault.start()
    try:
        result = run(run_dir, overrides, "cluster.call_timeout_s=30")
        fault.check()
        assert not frozen[0].is_running() or frozen[0].status() == psutil.STATUS_ZOMBIE, "the frozen rank was left"
    finally:
        for p in frozen:  # never leave a stopped process behind, whatever happened
            if p.is_running():
                p.kill()
    events = assert_healed(run_dir, result, uninterrupted, {"learner"})
    assert len(events) == 1 and "deadline" in events[0]["error"], events


@pytest.mark.slow
def test_a_lost_worker_node_is_replaced_by_the_remaining_node(head, overrides, uninterrupted, tmp_path):
    node = start_worker_node(head, num_cpus=1, env={k: v for k, v in NODE_ENV.items() if "OSX" not in k})
    try:
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.monotonic() < deadline, "the worker node never joined"
            time.sleep(0.2)
        run_dir, hosted = tmp_path / "run", []

        def lose_the_node() -> None:
            ours = {p.pid for p in node.our_processes()}
            hosted.extend(r for r in ("learner-0", "learner-1", "rollout-0", "reward-0")
                          if actor_pid(run_dir, r) in ours)
            assert hosted, "nothing ran on the worker node: the test would prove nothing"
            node.kill()

        fault = AfterCheckpoint(run_dir, 2, lose_the_node)
        fault.start()
        result = run(run_dir, overrides)
        fault.check()
    finally:
        node.stop()
    events = assert_healed(run_dir, result, uninterrupted, {r.split("-")[0] for r in hosted} | {"learner"})
    assert len(events) == 1, events


# ---- resumed logs: one row per step, whoever resumed --------------------------------------------
def test_resuming_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    from spacevista.tracking import drop_rows_after, read_history

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 4))
                                            + '{"step": 5, "x"')  # a row cut by a crash
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 2, 4)))
    drop_rows_after(tmp_path, 2)
    assert [r["step"] for r in read_history(tmp_path)] == [1, 2]
    assert [r["step"] for r in read_history(tmp_path, "eval.jsonl")] == [0, 2]
    drop_rows_after(tmp_path, 0)  # starting over: step 0's evaluation runs again
    assert read_history(tmp_path) == [] and read_history(tmp_path, "eval.jsonl") == []


def test_a_named_run_dir_is_hydras_output_dir_too_so_a_resume_leaves_no_empty_directory():
    from spacevista.cli import train_args

    assert train_args(["steps=3", "run_dir=runs/a", "resume=auto"])[-1] == "hydra.run.dir=runs/a"
    assert train_args(["steps=3"]) == ["steps=3"]
    assert train_args(["-m", "run_dir=runs/a", "seed=1,2"]) == ["-m", "run_dir=runs/a", "seed=1,2"]
