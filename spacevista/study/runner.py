"""Run a study: every (training run, seed) as a Ray task, each followed by `eval run` on the full
held-out split for every variant that shares the run.

A trial is two kinds of subprocess on the node its task lands on: `spacevista train` (its own local
Ray, loopback, in its own run directory) and `spacevista eval run` (in-process engine). Their exact
command lines are kept in `trial.json` and in the report. A finished trial (its eval summaries
present) is not run again, so a study can be resumed or extended with more seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spacevista.study.presets import Study


@dataclass(frozen=True)
class StudyOptions:
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()  # applied to every training run (budget, sizes, caches)
    parallel: int = 1  # trials at once on a local Ray (each trial starts its own local Ray for training)
    address: str = ""  # "" = a local Ray; else a running cluster's address (each trial is a task there)
    trial_cpus: float = 1.0  # CPUs a trial's task claims (sets how many run at once on a cluster)
    eval_args: tuple[str, ...] = ()  # extra `eval run` arguments (e.g. --limit 40, --max-tokens 64)


@dataclass
class Trial:
    """One training run and the evaluations of it that the study's variants ask for."""

    key: str
    seed: int
    overrides: tuple[str, ...]
    run_dir: str
    evals: dict[str, str] = field(default_factory=dict)  # variant name -> eval kind
    commands: list[str] = field(default_factory=list)

    def eval_dir(self, variant: str) -> Path:
        return Path(self.run_dir) / "eval" / variant


def trial_key(overrides: tuple[str, ...]) -> str:
    """A short stable name for a training configuration (the run directory's prefix)."""
    return "default" if not overrides else hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:10]


def plan_trials(study: Study, options: StudyOptions, runs_root: Path) -> list[Trial]:
    """One trial per distinct (variant overrides + common overrides, seed); variants sharing a training
    configuration share its trial."""
    trials: dict[tuple[str, int], Trial] = {}
    for variant in study.variants:
        overrides = (*options.overrides, *variant.overrides)
        key = trial_key(overrides)
        for seed in options.seeds:
            trial = trials.get((key, seed))
            if trial is None:
                trial = trials[(key, seed)] = Trial(key, seed, overrides, str(runs_root / f"{key}-seed{seed}"))
            trial.evals[variant.name] = variant.eval
    return list(trials.values())


def train_command(trial: Trial) -> list[str]:
    return [sys.executable, "-m", "spacevista", "train", f"run_dir={trial.run_dir}", f"seed={trial.seed}",
            "log.progress=false", *trial.overrides]


def eval_command(trial: Trial, variant: str, kind: str, data: Path, eval_args: tuple[str, ...]) -> list[str]:
    """`eval run` of the run's final checkpoint (router learned or label), or of its SFT-trained base."""
    from spacevista.cluster.run_storage import latest_checkpoint

    run = Path(trial.run_dir)
    if kind == "sft":
        target = ["--checkpoint", "none", "--model", str(run / "policy")]
    else:
        checkpoint = latest_checkpoint(run)
        if checkpoint is None:
            raise RuntimeError(f"{run}: training left no complete checkpoint")
        target = ["--checkpoint", str(checkpoint), "--router", kind]
    return [sys.executable, "-m", "spacevista", "eval", "run", *target, "--data", str(data),
            "--out", str(trial.eval_dir(variant)), *eval_args]


def held_out_data(overrides: tuple[str, ...]) -> Path:
    """The split `eval run` reads: data.test if set, else the synthetic set's root (its test/ split)."""
    from spacevista.preflight import _synthetic_data  # cached by its parameters: training built it already
    from spacevista.configs.loader import compose, to_train_config

    cfg = to_train_config(compose(list(overrides)))
    return Path(cfg.data.test) if cfg.data.test else _synthetic_data(cfg)


def run_trial(trial: Trial, eval_args: tuple[str, ...]) -> Trial:
    """Train (unless done), then evaluate each variant (unless done); logs beside the run."""
    run = Path(trial.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    commands = [train_command(trial)]
    if not (run / "trained.json").is_file():
        _call(commands[0], run / "train.log")
        (run / "trained.json").write_text(json.dumps({"command": shlex.join(commands[0])}))
    data = held_out_data(trial.overrides)
    for variant, kind in trial.evals.items():
        command = eval_command(trial, variant, kind, data, eval_args)
        commands.append(command)
        if not (trial.eval_dir(variant) / "summary.json").is_file():
            _call(command, run / f"eval-{variant}.log")
    trial.commands = [shlex.join(_portable(c)) for c in commands]
    (run / "trial.json").write_text(json.dumps(asdict(trial), indent=1))
    return trial


def _portable(command: list[str]) -> list[str]:
    """The command as a user types it (`spacevista ...`, not this interpreter's path)."""
    return ["spacevista", *command[3:]] if command[1:3] == ["-m", "spacevista"] else command


def _call(command: list[str], log: Path) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # the trial's training starts its own local Ray
    with log.open("w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{shlex.join(_portable(command))} exited {done.returncode}; {log}:\n{tail}")


def run_trials(trials: list[Trial], options: StudyOptions, progress: Any = print) -> list[Trial]:
    """Every trial as a Ray task (a local Ray unless `options.address`), at most `parallel` at once locally."""
    import ray

    from spacevista.cluster.local_ray import loopback_node_ip

    owns = not ray.is_initialized()
    if owns and options.address:
        ray.init(address=options.address, log_to_driver=False)
    elif owns:
        temp = tempfile.mkdtemp(prefix="svs-", dir="/tmp")  # AF_UNIX socket paths must stay short
        with loopback_node_ip():
            ray.init(address="local", num_cpus=max(1, options.parallel), include_dashboard=False,
                     _node_ip_address="127.0.0.1", _temp_dir=temp, log_to_driver=False)
    try:
        task = ray.remote(run_trial).options(num_cpus=1 if not options.address else options.trial_cpus,
                                             max_retries=0)
        pending = {task.remote(t, options.eval_args): t for t in trials}
        done: list[Trial] = []
        start = time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(ready[0])
            done.append(ray.get(ready[0]))
            progress(f"trial {trial.key} seed {trial.seed} done ({len(done)}/{len(trials)}, "
                     f"{time.perf_counter() - start:.0f} s)")
        return done
    finally:
        if owns:
            ray.shutdown()


def variant_summaries(study: Study, trials: list[Trial]) -> dict[str, dict[int, dict[str, Any]]]:
    """{variant: {seed: its eval summary.json + its result rows under "rows"}} for every finished evaluation."""
    out: dict[str, dict[int, dict[str, Any]]] = {v.name: {} for v in study.variants}
    for trial in trials:
        for variant in trial.evals:
            path = trial.eval_dir(variant) / "summary.json"
            if path.is_file():
                rows = (trial.eval_dir(variant) / "results.jsonl").read_text().splitlines()
                out[variant][trial.seed] = {**json.loads(path.read_text()),
                                            "rows": [json.loads(line) for line in rows if line.strip()]}
    return out
