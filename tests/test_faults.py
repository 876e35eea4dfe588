"""Fault injection: a job heals itself. Each fault hits a short run on a real Ray cluster of ours (a head,
and for node loss a second node, both on 127.0.0.1 with their own temp dirs) right after a checkpoint
commits; the run resumes from exactly that checkpoint, completes without a person, and its final adapters
equal an uninterrupted run's of the same seed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import ray
import torch

from raycluster import start_head, start_worker_node
from spacevista.actors.controller import run_training
from spacevista.actors.recovery import Recovery, RoleFailure, read_events
from spacevista.cluster.local_ray import loopback_node_ip
from spacevista.configs.loader import compose, to_train_config
from test_train_e2e import SHORT, VARIED_REWARD, expert_tensors

STEPS = 6
FAULT_AT = 2  # each fault comes right after this step's checkpoint commits (of 2, 4, 6)
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


class AtCommit:
    """Injects a fault right after the run commits checkpoint `step` the first time, in the controller's own
    thread (its `Recovery.committed` hook): no step after it has started, so the recovery must resume from
    exactly that checkpoint (a fault from another thread could land a step or a checkpoint later)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: int, fault: Callable[[], None]):
        self.name, self.fault = f"step_{step}", fault
        self.error: BaseException | None = None
        self.done = False
        committed = Recovery.committed

        def hook(recovery: Recovery, path: Path) -> None:
            committed(recovery, path)
            if path.name == self.name and not self.done and self.error is None:
                self.inject()

        monkeypatch.setattr(Recovery, "committed", hook)

    def inject(self) -> None:
        try:
            self.fault()
            self.done = True
        except BaseException as err:  # noqa: BLE001 - the test reports it: raised into the run, a Ray error
            self.error = err  # would pass for the fault itself and be recovered from

    def check(self) -> None:
        assert self.error is None, f"the fault was not injected: {self.error!r}"
        assert self.done, f"the run never committed {self.name}"


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


def assert_healed(run_dir: Path, result, uninterrupted: dict[str, torch.Tensor], roles: set[str]) -> dict:
    """The run ended at its last step, with one log row per step, its one fault recovered (an event naming a
    role in `roles`) from exactly the checkpoint committed before the fault (FAULT_AT: on CPU a restart from
    another step ends with equal adapters, so only the event can tell), and its adapters equal the
    uninterrupted run's, tensor for tensor."""
    events = read_events(run_dir)
    recoveries = len(events)
    assert recoveries == 1 and events[0]["event"] == "recovery", events
    assert events[0]["role"] in roles, events
    checkpoint = run_dir / "checkpoints" / f"step_{FAULT_AT}"
    assert (events[0]["resume_step"], events[0]["checkpoint"]) == (FAULT_AT, str(checkpoint)), events
    assert result.steps == STEPS
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "a step logged twice, or missing"
    assert rows[-1]["faults/recoveries"] == recoveries
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS
    healed = expert_tensors(run_dir / "checkpoints" / f"step_{STEPS}")
    assert healed.keys() == uninterrupted.keys() and healed
    assert all(torch.equal(healed[k], uninterrupted[k]) for k in healed), "the healed run's adapters differ"
    return events[0]


@pytest.mark.slow
def test_a_killed_learner_rank_is_rebuilt_and_the_run_continues_from_its_checkpoint(head, overrides, uninterrupted,
                                                                                    tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    fault = AtCommit(monkeypatch, FAULT_AT, lambda: os.kill(actor_pid(run_dir, "learner-1"), signal.SIGKILL))
    result = run(run_dir, overrides)
    fault.check()
    assert_healed(run_dir, result, uninterrupted, {"learner"})


@pytest.mark.slow
def test_a_rollout_worker_killed_past_its_restarts_is_rebuilt(head, overrides, uninterrupted, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def kill_three_times() -> None:  # max_restarts=2: Ray restarts it twice, then it is lost
        pids = []
        for _ in range(3):
            pids.append(actor_pid(run_dir, "rollout-0"))
            os.kill(pids[-1], signal.SIGKILL)
        assert len(set(pids)) == 3

    fault = AtCommit(monkeypatch, FAULT_AT, kill_three_times)
    result = run(run_dir, overrides)
    fault.check()
    # the worker's third death is past its restarts; the next step fails on it, or in the learner, which
    # cannot fetch a prompt that the dead worker owned (OwnerDiedError): either is a recovery
    event = assert_healed(run_dir, result, uninterrupted, {"rollout", "learner"})
    assert "ActorDiedError" in event["error"] or "OwnerDiedError" in event["error"], event


@pytest.mark.slow
def test_a_frozen_learner_rank_becomes_a_recovery_at_the_call_deadline(head, overrides, uninterrupted, tmp_path,
                                                                       monkeypatch):
    run_dir, frozen = tmp_path / "run", []

    def freeze() -> None:
        frozen.append(psutil.Process(actor_pid(run_dir, "learner-0")))
        frozen[0].suspend()  # SIGSTOP

    fault = AtCommit(monkeypatch, FAULT_AT, freeze)
    try:
        result = run(run_dir, overrides, "cluster.call_timeout_s=30")
        fault.check()
        assert not frozen[0].is_running() or frozen[0].status() == psutil.STATUS_ZOMBIE, "the frozen rank was left"
    finally:
        for p in frozen:  # never leave a stopped process behind, whatever happened
            if p.is_running():
                p.kill()
    event = assert_healed(run_dir, result, uninterrupted, {"learner"})
    assert "deadline" in event["error"], event


@pytest.mark.slow
def test_a_lost_worker_node_is_replaced_by_the_remaining_node(head, overrides, uninterrupted, tmp_path, monkeypatch):
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

        fault = AtCommit(monkeypatch, FAULT_AT, lose_the_node)
        result = run(run_dir, overrides)
        fault.check()
    finally:
        node.stop()
    assert_healed(run_dir, result, uninterrupted, {r.split("-")[0] for r in hosted} | {"learner"})


# ---- where a recovery resumes: the checkpoints this run committed, recorded -----------------------
def test_a_recovery_resumes_from_what_this_run_committed_never_from_another_runs_newer_checkpoints(tmp_path):
    from spacevista.cluster import run_storage

    def commit(step: int) -> Path:
        return run_storage.commit(run_storage.staging_dir(tmp_path, step), step, {})

    def recover(recovery: Recovery) -> tuple[int, str | None]:
        recovery.recover(RoleFailure("learner", RuntimeError("lost")))
        event = read_events(tmp_path)[-1]
        return event["resume_step"], event["checkpoint"]

    started_from = commit(2)
    later = time.time() + 3600  # another run's: higher steps, and files newer than this run (a skewed clock)
    for old in (commit(8), commit(10)):
        os.utime(old / run_storage.COMPLETE_MARKER, (later, later))

    fresh = Recovery(tmp_path, 5, None)  # nothing committed, started from nothing: step 0
    assert recover(fresh) == (0, None) and fresh.checkpoint is None
    resumed = Recovery(tmp_path, 5, started_from)  # nothing committed yet: the one it started from
    assert recover(resumed) == (2, str(started_from))
    mine = commit(4)
    resumed.committed(mine)
    assert recover(resumed) == (4, str(mine)) and resumed.checkpoint == mine
    assert [e["recovery"] for e in read_events(tmp_path)] == [1, 1, 2]


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
