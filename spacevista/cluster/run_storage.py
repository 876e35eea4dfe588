"""Run storage: the checkpoint directories `run_dir/checkpoints/step_N/`, each written whole or not at all.

Writers fill a temporary sibling directory; `commit` fsyncs it, writes its COMPLETE marker and renames it
into place, so a crash mid-write leaves the previous checkpoints intact and no half-written `step_N` (a step
written again after a resume replaces its old copy by two renames: see `commit`). Pure file logic; what is
inside a step directory is `learner.checkpoint_files`'.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STEP_DIR = re.compile(r"^step_(\d+)$")
COMPLETE_MARKER = "COMPLETE"


def checkpoints_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def staging_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """A fresh temporary directory for step `step` (any stale one from a crash is removed)."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def committed_dir(directory: Path) -> Path:
    """Where `directory` will lie once committed: `step_N` beside a `staging_dir`, else itself (so a
    checkpoint can name its own files by the absolute path they will have)."""
    m = re.fullmatch(r"\.step_(\d+)\.tmp", directory.name)
    return directory.with_name(f"step_{m.group(1)}") if m else directory


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())


def commit(tmp: Path, step: int, meta: dict[str, Any], keep: int = 0) -> Path:
    """Mark `tmp` complete, rename it to `step_N`, and prune to the newest `keep` (0 keeps all)."""
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"step": step, **meta}, indent=1))
    _fsync_tree(tmp)
    final = tmp.parent / f"step_{step}"
    if final.exists():  # re-running a step after resume: move the old copy aside, then the new one in. Two
        # renames, so not atomic: a crash between them leaves `.step_N.old` and no `step_N` (resume=auto
        # then takes the newest earlier checkpoint).
        trash = tmp.parent / f".step_{step}.old"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    if keep > 0:
        for old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / COMPLETE_MARKER).exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class ResumeRefused(ValueError):
    """`resume=never` over a run directory that already holds checkpoints."""


def resume_problem(resume: str, run_dir: str | os.PathLike) -> str | None:
    """Why the run cannot start in `run_dir` with `resume`, or None. `never` over another run's checkpoints
    would mix two runs' steps in one directory: `auto` would later resume from the wrong one, and pruning
    (`keep_checkpoints`) could delete this run's newest."""
    found = list_checkpoints(run_dir) if resume == "never" else []
    if not found:
        return None
    return (f"resume=never: run_dir {Path(run_dir)} already holds checkpoints ({found[0].name} to "
            f"{found[-1].name}); set resume=auto to continue that run, or a fresh run_dir to start a new one")


def resolve_resume(resume: str, run_dir: str | os.PathLike) -> Path | None:
    """`auto` -> newest complete checkpoint in run_dir (or None); `never` -> None, refused (ResumeRefused)
    where run_dir holds checkpoints; else a path that must be complete."""
    if (problem := resume_problem(resume, run_dir)) is not None:
        raise ResumeRefused(problem)
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume).expanduser()
    if not (path / COMPLETE_MARKER).exists():
        raise FileNotFoundError(f"resume={resume!r}: {path} is not a complete checkpoint (no {COMPLETE_MARKER} file)")
    return path


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / COMPLETE_MARKER).read_text())["step"])
