"""`spacevista submit` and `spacevista jobs`: the training job on a Ray cluster via the Ray Jobs SDK.

Token authentication (on by default since Ray 2.60) stays on: the client runs with
`RAY_AUTH_MODE=token` and finds the token where Ray looks (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`,
`~/.ray/auth_token`); `--token-file` points `RAY_AUTH_TOKEN_PATH` at another file. Ray is imported
only when a command runs, after the environment is set.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _prepare_auth(token_file: str | None) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise SystemExit(f"--token-file {path}: no such file")
        if path.stat().st_mode & 0o077:
            raise SystemExit(f"--token-file {path}: readable by other users; run `chmod 600 {path}`")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    else:
        protect_token_file()


def protect_token_file(path: Path = Path("~/.ray/auth_token")) -> None:
    """Ray writes its auth token world-readable (0644); make it owner-only (0600) when it is ours."""
    token = path.expanduser()
    try:
        if token.is_file() and token.stat().st_mode & 0o077 and token.stat().st_uid == os.getuid():
            token.chmod(0o600)
    except OSError:
        pass


def check_transport(address: str, insecure: bool) -> None:
    """Refuse to send the bearer token in clear text (plain http) to a host other than this machine."""
    parsed = urlparse(address if "://" in address else f"http://{address}")
    if parsed.scheme != "http" or insecure:
        return
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"--address {address}: plain http to {host!r} would send the Ray auth token in clear "
                         "text; use https://, an SSH tunnel to http://127.0.0.1:8265, or pass --insecure")


def client(address: str, token_file: str | None = None, insecure: bool = False):
    """A JobSubmissionClient for `address`, with token auth prepared (and the transport checked)."""
    check_transport(address, insecure)
    _prepare_auth(token_file)
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def build_runtime_env(working_dir: str | None, env: list[str], pip: list[str]) -> dict[str, Any]:
    runtime_env: dict[str, Any] = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        runtime_env["env_vars"][key] = value
    if working_dir:
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = [".venv", ".venv-vllm", "runs", ".git", "*.egg-info"]
    if pip:
        runtime_env["pip"] = pip
    return runtime_env


def entrypoint(overrides: list[str]) -> str:
    """The job's command: the same `spacevista train` a user runs locally, joining the job's cluster."""
    return shlex.join(["python", "-m", "spacevista", "train", "cluster.address=auto", *overrides])


def follow(c, job_id: str) -> str:
    """Stream the job's logs until it ends; return its final status."""
    async def _tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(_tail())
    return wait(c, job_id, timeout_s=60)


def wait(c, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(1.0)


def submit_when_ready(c, timeout_s: float = 180.0, **job: Any) -> str:
    """Submit, waiting out a head whose job agent has not registered yet (a fresh `ray start`; on a busy
    2-core machine its agent took over 60 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return c.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def run_submit(args: argparse.Namespace) -> int:
    overrides = [o for o in args.overrides if o != "--"]
    c = client(args.address, args.token_file, args.insecure)
    job_id = submit_when_ready(
        c,
        entrypoint=entrypoint(overrides),
        runtime_env=build_runtime_env(args.working_dir, args.env, args.pip),
        submission_id=args.job_id,
        metadata={"app": "spacevista", "overrides": " ".join(overrides)[:1000]},
    )
    print(f"submitted job {job_id}")
    print(f"dashboard: {args.address.rstrip('/')}/#/jobs/{job_id}")
    if not args.follow:
        return 0
    status = follow(c, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def run_jobs(args: argparse.Namespace) -> int:
    c = client(args.address, args.token_file, args.insecure)
    if args.action == "status":
        info = c.get_job_info(args.job_id)
        print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    elif args.action == "logs":
        if args.follow:
            follow(c, args.job_id)
        else:
            sys.stdout.write(c.get_job_logs(args.job_id))
    elif args.action == "stop":
        stopped = c.stop_job(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'not running'}")
    elif args.action == "list":
        for job in c.list_jobs():
            print(f"{job.submission_id or job.job_id}\t{job.status.value}\t{job.entrypoint}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", DEFAULT_ADDRESS),
                   help="Ray dashboard address (default: $RAY_ADDRESS or %(default)s)")
    p.add_argument("--token-file", help="Ray auth token file, mode 0600 (default: where Ray looks)")
    p.add_argument("--insecure", action="store_true",
                   help="allow plain http to a non-loopback host (the token then travels in clear text)")


def add_submit_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit the training job to a Ray cluster (Ray Jobs)")
    _common(p)
    p.add_argument("--working-dir", help="ship this directory as the job's working_dir")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE environment for the job")
    p.add_argument("--pip", action="append", default=[], help="pip requirement for the job's runtime_env")
    p.add_argument("--job-id", help="submission id (default: generated)")
    p.add_argument("--follow", action="store_true", help="stream logs until the job ends")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then Hydra overrides for `spacevista train`")
    p.set_defaults(func=run_submit)


def add_jobs_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="status | logs | stop | list of submitted jobs")
    _common(p)
    p.add_argument("action", choices=["status", "logs", "stop", "list"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(func=run_jobs)
