"""Every data row is checked before Ray starts: `fail` names file, row and field; `skip` reports and avoids it."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spacevista.records.io import DataError
from spacevista.records.schema import SCHEMA, Answer, Frame, Record
from spacevista.records.validate import apply_policy, validate_dataset


def _frame(tmp_path: Path, name: str) -> Frame:
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return Frame(path=str(path))


def _numeric(tmp_path: Path, i: int, value: str, scale: str = "indoor") -> dict:
    return Record(id=f"n{i}", scale=scale, task="object_distance",
                  prompt=[{"role": "user", "content": "<video>\nHow far?"}], answer=Answer("numeric", value, "m"),
                  videos=[[_frame(tmp_path, f"n{i}")]], index=i).to_row()


def _count(tmp_path: Path, i: int, value: str) -> dict:
    row = Record(id=f"c{i}", scale="tabletop", task="count", prompt=[{"role": "user", "content": "<image>\nHow many?"}],
                 answer=Answer("count", value if value.isascii() else "3"), images=[_frame(tmp_path, f"c{i}")],
                 index=i).to_row()
    row["answer"]["value"] = value  # "²": as a hand-edited file would hold it (to_row itself cannot write it)
    return row


def _write(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


@pytest.fixture
def bad_dataset(tmp_path) -> Path:
    missing = _numeric(tmp_path, 3, "2.5")
    missing["videos"][0][0]["path"] = str(tmp_path / "gone.png")
    rows = [_numeric(tmp_path, 0, "1.5"), _numeric(tmp_path, 1, "nan"), _numeric(tmp_path, 2, "-4"), missing,
            _count(tmp_path, 4, "²"), _count(tmp_path, 5, "2"), _numeric(tmp_path, 6, "3", scale="drone")]
    return _write(tmp_path / "train.parquet", rows)


def test_each_bad_row_is_named_by_file_row_and_field(bad_dataset):
    result = validate_dataset(bad_dataset)
    assert result.rows == 7 and result.kept == [0, 5, 6]
    found = {(r.row, r.field) for r in result.rejects}
    assert found == {(1, "answer.value"), (2, "answer.value"), (3, "videos[0]"), (4, "answer.value")}
    assert all(r.file == str(bad_dataset) for r in result.rejects)
    assert "gone.png" in next(r.reason for r in result.rejects if r.row == 3)


def test_fail_policy_raises_naming_rows_and_what_to_do(bad_dataset, tmp_path):
    with pytest.raises(DataError) as err:
        apply_policy([validate_dataset(bad_dataset)], "fail", tmp_path / "rejects.jsonl")
    message = str(err.value)
    assert "4 invalid row(s)" in message and "data.invalid=skip" in message
    assert f"{bad_dataset}, row 4 (record 'c4'), field 'answer.value'" in message


def test_skip_policy_writes_rejects(bad_dataset, tmp_path):
    apply_policy([validate_dataset(bad_dataset)], "skip", tmp_path / "rejects.jsonl")
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [1, 2, 3, 4] and rejects[0]["id"] == "n1"


def test_a_pass_is_cached_until_the_file_changes(bad_dataset, tmp_path):
    cache = tmp_path / "cache"
    first = validate_dataset(bad_dataset, cache)
    assert validate_dataset(bad_dataset, cache).kept == first.kept and len(list(cache.iterdir())) == 1
    _write(bad_dataset, [_numeric(tmp_path, 0, "1.5")])
    assert validate_dataset(bad_dataset, cache).rejects == []


def test_skipped_rows_are_never_drawn(bad_dataset, tmp_path):
    from spacevista.preflight import _validated_data
    from spacevista.configs.loader import compose, to_train_config
    from spacevista.records.sampler import ScaleSampler

    cfg = to_train_config(compose(["data.invalid=skip", f"data.synth.cache_dir={tmp_path / 'c'}"]))
    test = _write(tmp_path / "test.parquet", [_numeric(tmp_path, 7, "inf"), _numeric(tmp_path, 8, "2")])
    dataset, test_path = _validated_data(cfg, bad_dataset, test, tmp_path / "run")
    sampler = ScaleSampler(dataset.scales, None, seed=0)
    drawn = {r.id for _ in range(20) for r in dataset.take(sampler.next_batch(4))}
    assert drawn == {"n0", "c5", "n6"}
    assert pq.read_table(test_path).column("id").to_pylist() == ["n8"]
    assert len((tmp_path / "run" / "rejects.jsonl").read_text().splitlines()) == 5


def test_fail_is_the_default_and_stops_before_ray(bad_dataset, tmp_path):
    from spacevista.preflight import _validated_data
    from spacevista.configs.loader import compose, to_train_config

    cfg = to_train_config(compose([f"data.synth.cache_dir={tmp_path / 'c'}"]))
    assert cfg.data.invalid == "fail"
    with pytest.raises(DataError, match="row 1 .*field 'answer.value'"):
        _validated_data(cfg, bad_dataset, None, tmp_path / "run")
