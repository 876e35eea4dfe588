"""Cached directories built once and published whole: filled in a temporary sibling, then renamed into place.

A crash never leaves a half-written cache entry, and concurrent builders (e.g. several Ray actors) agree on
one result: the first rename wins and the others' identical builds are dropped. Pure file logic.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, build: Callable[[Path], None], *, marker: str) -> Path:
    """`target`, reused when `target/marker` exists, else made by `build(tmp)` in a temporary sibling `tmp`
    renamed to `target` (a lost race is fine when the winner's `marker` is there)."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: theirs is identical
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
