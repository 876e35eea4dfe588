"""A real local Ray head for tests: 127.0.0.1, its own temp dir and ports, token auth on, stopped by pid.

Never `ray stop` (it would kill other people's clusters on a shared machine): the processes this
head started are found by their command lines naming our temp dir, and only those are stopped.
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
from dataclasses import dataclass
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalHead:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    metrics_port: int
    env: dict[str, str]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            return resp.read().decode()

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

    def stop(self) -> None:
        procs = self.our_processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(num_cpus: int = 2) -> LocalHead:
    """`ray start --head` with the dashboard on 127.0.0.1; returns once the dashboard answers."""
    temp_dir = Path(tempfile.mkdtemp(prefix="svray-", dir="/tmp"))  # short: unix socket paths are limited
    head = LocalHead(temp_dir, free_port(), free_port(), free_port(), {})
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_metrics_report_interval_ms="1000",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    head.env = env
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={head.gcs_port}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={head.dashboard_port}",
           f"--metrics-export-port={head.metrics_port}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
           "--disable-usage-stats"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        head.stop()
        raise RuntimeError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")
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
