"""Parquet shards: lossless round trip, streaming across shards and row groups, errors naming the file and row."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spacevista.records.io import (DataError, RecordDataset, count_rows, iter_batches, iter_records, read_records,
                                write_records)
from spacevista.records.schema import SCHEMA, Answer, Frame, Record


def make_records(n: int) -> list[Record]:
    scale_names = ["tiny_tabletop", "tabletop", "indoor", "outdoor", "drone"]
    return [Record(id=f"r{i:03d}", scale=scale_names[i % 5], task="count",
                   prompt=[{"role": "user", "content": "<image><video>\nHow many?"}],
                   answer=Answer("count", str(i % 4)),
                   images=[Frame(path=f"img/{i}.png")],
                   videos=[[Frame(bytes=bytes([i % 256]) * 8), Frame(path=f"clip/{i}/1.png")]],
                   index=i, meta={"i": i})
            for i in range(n)]


def test_records_round_trip_through_parquet_with_bytes_and_path_frames(tmp_path):
    records = make_records(6)
    write_records(records, tmp_path)
    assert read_records(tmp_path) == records


def test_shards_and_row_groups_follow_the_configured_sizes(tmp_path):
    paths = write_records(make_records(25), tmp_path, rows_per_shard=10, row_group_size=4)
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(p).num_row_groups for p in paths] == [3, 3, 2]


def test_streaming_reader_yields_one_batch_per_row_group_across_shards_in_order(tmp_path):
    write_records(make_records(25), tmp_path, rows_per_shard=10, row_group_size=4)
    batches = list(iter_batches(tmp_path, columns=["id"]))
    assert [b.num_rows for b in batches] == [4, 4, 2, 4, 4, 2, 4, 1]
    assert [i for b in batches for i in b.column("id").to_pylist()] == [f"r{i:03d}" for i in range(25)]
    assert [r.id for r in iter_records(tmp_path)] == [f"r{i:03d}" for i in range(25)]


def test_count_rows_reads_only_footers(tmp_path):
    write_records(make_records(25), tmp_path, rows_per_shard=10)
    assert count_rows(tmp_path) == 25


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_records(make_records(3), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_writing_into_a_dataset_directory_needs_overwrite_and_drops_stale_shards(tmp_path):
    write_records(make_records(25), tmp_path, rows_per_shard=10)
    with pytest.raises(FileExistsError):
        write_records(make_records(3), tmp_path)
    write_records(make_records(3), tmp_path, rows_per_shard=10, overwrite=True)
    assert count_rows(tmp_path) == 3 and len(list(tmp_path.glob("*.parquet"))) == 1


def test_empty_input_writes_an_empty_readable_dataset(tmp_path):
    write_records([], tmp_path)
    assert read_records(tmp_path) == []


def test_schema_mismatch_names_the_file(tmp_path):
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "part-00000.parquet")
    with pytest.raises(DataError, match="part-00000.parquet: schema mismatch"):
        read_records(tmp_path)


def test_corrupt_file_names_the_file(tmp_path):
    (tmp_path / "part-00000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="part-00000.parquet: not a readable parquet file"):
        list(iter_batches(tmp_path))


def test_invalid_row_names_the_file_and_row(tmp_path):
    rows = [r.to_row() for r in make_records(5)]
    rows[3]["scale"] = rows[3]["extra_info"]["scale"] = "underwater"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "part-00000.parquet", row_group_size=2)
    with pytest.raises(DataError, match=r"part-00000.parquet, row 3: record 'r003', field 'scale'"):
        read_records(tmp_path)


def test_record_dataset_gives_random_access_and_scales(tmp_path):
    records = make_records(12)
    write_records(records, tmp_path, rows_per_shard=5)
    dataset = RecordDataset(tmp_path)
    assert len(dataset) == 12 and dataset[7] == records[7] and dataset[-1] == records[11]
    assert dataset.take([9, 0, 4]) == [records[9], records[0], records[4]]
    assert dataset.scales == [r.scale for r in records]
