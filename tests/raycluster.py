"""A real local Ray cluster for tests: a head and worker nodes, each with its own temp dir, ports and
resources, all on 127.0.0.1, token auth on, stopped by pid.

Never `ray stop` (it would kill other people's clusters on a shared machine): the processes a node
started are found by their command lines naming its temp dir, and only those are stopped (or, to
lose a node on purpose, killed at once with `LocalNode.kill`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalNode:
    """The processes of one Ray node of ours (raylet, agents and their workers), found by its temp dir."""

    temp_dir: Path
    env: dict[str, str]

    def our_processes(self) -> list[psutil.Process]:
        mine = []
        needle = str(self.temp_dir)
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(needle in part for part in (p.info["cmdline"] or [])):
                    mine.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        family = {p.pid: p for p in mine}
        for p in mine:
            try:
                family.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        return list(family.values())

    def kill(self) -> int:
        """Lose the node: SIGKILL every process of it at once (no goodbye to the GCS); how many were killed."""
        procs = self.our_processes()
        _signal(procs, psutil.Process.kill)
        psutil.wait_procs(procs, timeout=15)
        return len(procs)

    def stop(self) -> None:
        """Stop the node: SIGTERM its processes, SIGKILL those still alive after 15 s, remove its temp dir."""
        procs = self.our_processes()
        _signal(procs, psutil.Process.terminate)
        _, alive = psutil.wait_procs(procs, timeout=15)
        _signal(alive, psutil.Process.kill)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal(procs: list[psutil.Process], send: Callable[[psutil.Process], None]) -> None:
    """`send` (e.g. `psutil.Process.kill`) to each process; one that has exited already is skipped."""
    for p in procs:
        try:
            send(p)
        except psutil.NoSuchProcess:
            pass


@dataclass
class LocalHead(LocalNode):
    gcs_port: int = 0
    dashboard_port: int = 0
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            return resp.read().decode()


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_metrics_report_interval_ms="1000",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {}))


# `ray start` for a worker node on loopback. Ray refuses a second node while its cluster mode is off (the
# head's way to keep 127.0.0.1), and with it on turns 127.0.0.1 into this machine's routable address;
# so this node's `ray start` keeps cluster mode and takes 127.0.0.1 as its address from every perspective.
LOOPBACK_WORKER_START = ("import sys, ray._private.services as services; "
                         "services.node_ip_address_from_perspective = lambda address=None: '127.0.0.1'; "
                         "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")


def _ray_start(node: LocalNode, args: list[str], launcher: list[str] | None = None) -> None:
    cmd = [*(launcher or [str(Path(sys.executable).parent / "ray")]), "start", "--node-ip-address=127.0.0.1",
           f"--temp-dir={node.temp_dir}", "--disable-usage-stats", *args]
    proc = subprocess.run(cmd, env=node.env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        node.stop()
        raise RuntimeError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")


def start_head(num_cpus: int = 2, dashboard: bool = True, env: dict[str, str] | None = None) -> LocalHead:
    """`ray start --head` (with the dashboard on 127.0.0.1 unless told not to); returns once it answers.
    `env`: extra environment for Ray's processes (e.g. RAY_health_check_* to notice a lost node sooner)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="svray-", dir="/tmp"))  # short: unix socket paths are limited
    head = LocalHead(temp_dir, _env(env), free_port(), free_port(), free_port())
    _ray_start(head, ["--head", f"--port={head.gcs_port}", f"--include-dashboard={str(dashboard).lower()}",
                      "--dashboard-host=127.0.0.1", f"--dashboard-port={head.dashboard_port}",
                      f"--metrics-export-port={head.metrics_port}", f"--num-cpus={num_cpus}"])
    if not dashboard:
        return head
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(head.dashboard_url + "/api/version", timeout=5)
            break
        except Exception as err:  # noqa: BLE001 - 401 with token auth also means "up"
            if getattr(err, "code", None) in (401, 403):
                break
            time.sleep(1)
    return head


def start_worker_node(head: LocalHead, num_cpus: int = 1, env: dict[str, str] | None = None) -> LocalNode:
    """`ray start --address` a second node of the head's cluster: its own temp dir, CPUs and ports."""
    # joining a head by its address, a node must ask for token auth itself (as a client does)
    node = LocalNode(Path(tempfile.mkdtemp(prefix="svrayw-", dir="/tmp")),
                     _env({"RAY_AUTH_MODE": "token", **(env or {})}))
    _ray_start(node, [f"--address={head.address}", f"--num-cpus={num_cpus}",
                      f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                      f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                      f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"],
               launcher=[sys.executable, "-c", LOOPBACK_WORKER_START])
    return node
