"""A job that heals itself: a lost learner rank, a worker lost past its restarts, a lost node or a
frozen call becomes a recovery instead of the end of the run.

The controller runs the job as attempts. Each attempt builds every role (placement groups included)
and continues from `Recovery.checkpoint`: the newest checkpoint this run committed (the controller
reports each commit; a run directory's other checkpoints and file times are never trusted), or the one
it was started from; with none yet, the attempt starts over at step 0 (SFT warm-up included). A failed
attempt tears its roles down, `Recovery.recover` logs the fault as an event (console, events.jsonl,
the `faults/recoveries` metric and a Ray counter), and the next attempt starts, up to
`cluster.max_recoveries` times. Learner ranks and rollout workers are rebuilt whatever failed: the
ranks' state rolls back to the checkpoint (and a survivor may sit in a collective with the lost
rank), and so do the rollout workers' adapter versions. Reward workers are stateless and restart too.

Every blocking call on a role goes through `wait`: a deadline (`cluster.call_timeout_s`, or
`cluster.start_timeout_s` for starting roles, loading models and checkpoints and SFT steps) turns a
frozen actor into a fault, and every fault names its role.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import (ActorUnschedulableError, GetTimeoutError, NodeDiedError, ObjectLostError, RayActorError,
                            RayTaskError, WorkerCrashedError)
from rich.markup import escape

from spacevista.cluster import run_storage
from spacevista.tracking import console

# What a lost process, node or deadline raises from ray.get (a dead actor, an object on a dead node, ...)
FAULTS = (RayActorError, GetTimeoutError, ObjectLostError, NodeDiedError, WorkerCrashedError,
          ActorUnschedulableError)
EVENTS = "events.jsonl"
PING_S = 10.0  # a live actor answers a ping at once; a frozen or dead one does not


class RoleFailure(RuntimeError):
    """A role lost an actor (dead, frozen past its deadline, or on a lost node): the run can recover."""

    def __init__(self, role: str, cause: BaseException):
        self.role, self.cause = role, cause
        if isinstance(cause, GetTimeoutError):
            kind, inner = "no answer within the deadline", cause
        elif isinstance(cause, RayTaskError):  # e.g. OwnerDiedError: an object's owner (a lost worker) died
            inner = getattr(cause, "cause", None) or cause  # Ray's error is also an instance of its cause's class
            kind = f"{type(inner).__name__} in a {role} task"
        else:
            kind, inner = type(cause).__name__, cause
        lines = [x.strip() for x in str(inner).splitlines() if x.strip()]
        super().__init__(f"{role}: {kind}{': ' + lines[0] if lines else ''}")


def wait(refs: list[ray.ObjectRef], role: str, timeout_s: float, actors: Sequence[Any] = ()) -> list[Any]:
    """`ray.get(refs)` within `timeout_s`; a fault raises RoleFailure naming `role`. A task error while
    one of `actors` is gone (a learner rank whose collective failed because a peer died) is the role's
    fault too; any other task error is a bug and propagates as it is."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except FAULTS as err:
        raise RoleFailure(role, err) from err
    except RayTaskError as err:
        if actors and not all_alive(actors):
            raise RoleFailure(role, err) from err
        raise


def all_alive(actors: Sequence[Any], timeout_s: float = PING_S) -> bool:
    """Whether every actor answers a ping (a dead, frozen or busy-in-a-broken-collective one does not)."""
    try:
        ray.get([a.ping.remote() for a in actors], timeout=timeout_s)
        return True
    except (*FAULTS, RayTaskError):
        return False


class RecoveriesExhausted(RuntimeError):
    """A fault after `cluster.max_recoveries` recoveries: the run stops and needs a person."""


class Recovery:
    """The recovery budget, the checkpoint the next attempt resumes from, and the event log."""

    def __init__(self, run_dir: Path, limit: int, checkpoint: Path | None, metrics_prefix: str | None = None):
        self.run_dir, self.limit, self.checkpoint = run_dir, limit, checkpoint
        self.count = 0
        self._counter = None
        if metrics_prefix is not None:
            from ray.util.metrics import Counter

            self._counter = Counter(metrics_prefix.rstrip("_") + "_recoveries", "recoveries from a lost role",
                                    tag_keys=("role",))

    def committed(self, path: Path) -> None:
        """Record a checkpoint this run has just committed: the next attempt resumes from it. Recorded,
        not found by listing the run directory: another run's checkpoints there, or file times skewed
        by a network disk, would send a recovery to the wrong step."""
        self.checkpoint = path

    def recover(self, fault: BaseException) -> None:
        """Log `fault` as an event, naming `checkpoint` (the newest one this run committed, or the one
        it started from) as where the next attempt resumes; raise RecoveriesExhausted once the budget
        is spent."""
        role = fault.role if isinstance(fault, RoleFailure) else "cluster"
        step = run_storage.checkpoint_step(self.checkpoint) if self.checkpoint is not None else 0
        exhausted = self.count >= self.limit
        if not exhausted:
            self.count += 1
        self._event({"event": "gave_up" if exhausted else "recovery", "recovery": self.count, "limit": self.limit,
                     "role": role, "error": f"{type(fault).__name__}: {fault}"[:2000], "resume_step": step,
                     "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None})
        if exhausted:
            raise RecoveriesExhausted(f"{role} failed after {self.limit} recoveries (cluster.max_recoveries); "
                                      f"the newest checkpoint is {self.checkpoint}: {fault}") from fault
        where = (f"checkpoint step {step} ({self.checkpoint})" if self.checkpoint is not None
                 else "step 0: no checkpoint yet, so the run starts over (SFT warm-up included)")
        console.print(f"[yellow]fault:[/] {escape(str(fault))}\n[yellow]recovery {self.count}/{self.limit}:[/] "
                      f"rebuilding the roles, continuing from {escape(where)}")
        if self._counter is not None:
            self._counter.inc(1, tags={"role": role})

    def _event(self, row: dict[str, Any]) -> None:
        with (self.run_dir / EVENTS).open("a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events (recoveries, a final give-up), oldest first."""
    path = run_dir / EVENTS
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
