"""`spacevista submit` against a real local Ray head (ray start --head, dashboard, token auth on)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from raycluster import start_head
from spacevista.cluster.submit import entrypoint

pytestmark = pytest.mark.slow
TEMPLATES = Path(__file__).parent.parent / "spacevista" / "cluster" / "templates"
CONFIGS = Path(__file__).parent.parent / "spacevista" / "configs"


@pytest.fixture(scope="module")
def head():
    h = start_head(num_cpus=2)
    yield h
    h.stop()
    assert not h.our_processes(), "the test's Ray processes outlived it"


def cli(head, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spacevista", *args], env=head.env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_runs_a_short_training_job_and_its_metrics_reach_the_dashboard(head, tmp_path):
    overrides = ["steps=3", "learner.sft.steps=1", "learner.sft.batch_size=2", "rollout.prompts_per_step=2",
                 "rollout.n=2", "rollout.max_tokens=8", "data.synth.n=40", "model.tiny.hidden_size=64",
                 "model.tiny.num_layers=1", "model.tiny.intermediate_size=128", "model.tiny.num_heads=2",
                 "model.tiny.num_kv_heads=1", "eval_every=0", "log.progress=false", "log.plot=false",
                 "cluster.learner.num_cpus=0.25", "cluster.rollout.num_cpus=0.25",
                 f"run_dir={tmp_path / 'run'}", f"data.synth.cache_dir={tmp_path / 'data'}",
                 f"model.cache_dir={tmp_path / 'models'}"]
    submitted = cli(head, "submit", "--address", head.dashboard_url, "--", *overrides)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    assert f"{head.dashboard_url}/#/jobs/{job_id}" in submitted.stdout

    # Ray's agent drops a gauge ~2 export intervals (2 s here) after its process stops reporting, and a
    # `jobs status` call takes seconds: watch the endpoint from its own thread, several times a second.
    seen_metric, done = threading.Event(), threading.Event()

    def watch_metrics() -> None:
        while not done.is_set() and not seen_metric.is_set():
            try:
                if "ray_spacevista_reward{" in head.metrics_text():
                    seen_metric.set()
            except OSError:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_metrics, daemon=True)
    watcher.start()
    status = ""
    deadline = time.monotonic() + 480
    try:
        while time.monotonic() < deadline:
            status = cli(head, "jobs", "status", job_id, "--address", head.dashboard_url).stdout
            if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
                break
            time.sleep(1)
    finally:
        done.set()
        watcher.join(timeout=30)
    logs = cli(head, "jobs", "logs", job_id, "--address", head.dashboard_url).stdout
    assert "SUCCEEDED" in status, f"{status}\n{logs[-3000:]}"
    assert "run directory:" in logs
    assert seen_metric.is_set(), "no ray_spacevista_reward sample on the metrics endpoint while the job ran"
    assert (tmp_path / "run" / "checkpoints" / "step_3").is_dir()


def test_submit_without_a_token_is_refused_not_weakened(head, tmp_path):
    missing = tmp_path / "no-token"
    missing.write_text("not-the-token\n")
    missing.chmod(0o600)  # a token file others can read is refused before anything is sent
    proc = cli(head, "jobs", "list", "--address", head.dashboard_url, "--token-file", str(missing), timeout=120)
    assert proc.returncode != 0
    assert "401" in proc.stderr or "403" in proc.stderr or "uthenticat" in proc.stderr


def test_entrypoint_joins_the_jobs_cluster_and_passes_overrides():
    assert entrypoint(["rollout.n=8", "curriculum=mixed"]) == \
        "python -m spacevista train cluster.address=auto rollout.n=8 curriculum=mixed"


@pytest.mark.parametrize("name", ["ray_cluster.yaml", "rayjob.yaml"])
def test_templates_parse_and_name_the_real_entry_point_and_configs(name):
    text = (TEMPLATES / name).read_text()
    doc = yaml.safe_load(text)
    assert doc
    commands = re.findall(r"(?:spacevista submit|python -m spacevista train)[^\n]*", text)
    assert commands
    for command in commands:
        for group, choice in re.findall(r"\b(cluster|rollout|model|data|curriculum|learner)=(\w+)", command):
            assert (CONFIGS / group / f"{choice}.yaml").exists(), f"{name}: {group}={choice} is not a config"


def test_grafana_dashboard_queries_the_metrics_we_export():
    import json

    from spacevista.cluster import metrics

    dash = json.loads((TEMPLATES / "grafana_dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    source = Path(metrics.__file__).read_text()
    for name in re.findall(r"ray_spacevista_(\w+?)(?:_total)?[{\[\s]", exprs + " "):
        assert f'p + "{name}"' in source, name
