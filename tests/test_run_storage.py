"""Atomic checkpoint directories: complete or absent, newest found, pruned."""

import pytest

from spacevista.cluster import run_storage as ck


def write(run, step, keep=0):
    tmp = ck.staging_dir(run, step)
    (tmp / "payload.txt").write_text(str(step))
    return ck.commit(tmp, step, {"note": "t"}, keep=keep)


def test_commit_makes_a_complete_step_dir_and_latest_finds_it(tmp_path):
    write(tmp_path, 5)
    write(tmp_path, 10)
    latest = ck.latest_checkpoint(tmp_path)
    assert latest.name == "step_10" and (latest / "payload.txt").read_text() == "10"
    assert ck.checkpoint_step(latest) == 10


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    write(tmp_path, 5)
    tmp = ck.staging_dir(tmp_path, 10)          # a crash after this, before commit
    (tmp / "payload.txt").write_text("partial")
    assert ck.latest_checkpoint(tmp_path).name == "step_5"
    assert ck.resolve_resume("auto", tmp_path).name == "step_5"


def test_keep_prunes_oldest(tmp_path):
    for s in (1, 2, 3, 4):
        write(tmp_path, s, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_3", "step_4"]


def test_recommitting_a_step_replaces_it(tmp_path):
    write(tmp_path, 3)
    tmp = ck.staging_dir(tmp_path, 3)
    (tmp / "payload.txt").write_text("again")
    final = ck.commit(tmp, 3, {})
    assert (final / "payload.txt").read_text() == "again"


def test_resume_never_starts_only_where_no_checkpoint_is(tmp_path):
    assert ck.resolve_resume("never", tmp_path / "new") is None
    ck.staging_dir(tmp_path, 1)  # a half-written checkpoint is none
    assert ck.resolve_resume("never", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ck.resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_resume_never_over_checkpoints_is_refused_naming_the_key_the_directory_and_the_ways_out(tmp_path):
    write(tmp_path, 2)
    write(tmp_path, 4)
    with pytest.raises(ck.ResumeRefused) as err:
        ck.resolve_resume("never", tmp_path)
    msg = str(err.value)
    assert all(part in msg for part in ("resume=never", str(tmp_path), "step_2 to step_4", "resume=auto",
                                        "fresh run_dir")), msg
    assert ck.resolve_resume("auto", tmp_path).name == "step_4"  # the way to continue it


def test_the_refusal_is_a_config_error_before_anything_is_prepared(tmp_path):
    from spacevista.configs.loader import compose, to_train_config
    from spacevista.preflight import ConfigError, validate_config

    write(tmp_path, 2)
    cfg = to_train_config(compose([f"run_dir={tmp_path}", "resume=never"]))
    with pytest.raises(ConfigError, match="resume=never"):
        validate_config(cfg)
    validate_config(to_train_config(compose([f"run_dir={tmp_path}", "resume=auto"])))
