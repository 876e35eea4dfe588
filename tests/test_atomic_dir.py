"""`atomic_dir.build_once`: a cached directory appears whole or not at all, and is built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from spacevista.atomic_dir import build_once


def _write_config(tmp: Path) -> None:
    (tmp / "config.json").write_text("{}")


def test_a_missing_directory_is_built_and_published_with_no_temporary_left(tmp_path):
    target = build_once(tmp_path / "cache" / "entry", _write_config, marker="config.json")
    assert (target / "config.json").read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == ["entry"]


def test_a_published_directory_is_reused_without_building(tmp_path):
    build_once(tmp_path / "entry", _write_config, marker="config.json")

    def fail(tmp: Path) -> None:
        raise AssertionError("built again")

    assert build_once(tmp_path / "entry", fail, marker="config.json") == tmp_path / "entry"


def test_a_lost_race_keeps_the_winners_directory(tmp_path):
    target = tmp_path / "entry"

    def race(tmp: Path) -> None:  # another builder publishes while this one is still building
        target.mkdir()
        (target / "config.json").write_text("winner")
        (tmp / "config.json").write_text("loser")

    assert (build_once(target, race, marker="config.json") / "config.json").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def crash(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-build")

    with pytest.raises(RuntimeError, match="crash mid-build"):
        build_once(tmp_path / "entry", crash, marker="config.json")
    assert list(tmp_path.iterdir()) == []
