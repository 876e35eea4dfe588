"""Records <-> parquet shards.

A dataset is a directory of shards ``part-00000.parquet, part-00001.parquet, ...`` (or one parquet
file), each with ``schema.SCHEMA``. Shards are written atomically (temp file + rename); readers
stream row group by row group, so memory holds one row group at a time. ``RecordDataset`` keeps a
whole dataset as one Arrow table for random access by index (what the sampler's indices address).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spacevista.records.schema import SCHEMA, Record, RecordError

SHARD_NAME = "part-{:05d}.parquet"


class DataError(Exception):
    """A dataset file that cannot be read as Records; the message names the file (and row)."""


def write_records(records: Iterable[Record], out_dir: str | os.PathLike, *, rows_per_shard: int = 10_000,
                  row_group_size: int = 512, validate: bool = True, overwrite: bool = False) -> list[Path]:
    """Write records to ``out_dir/part-NNNNN.parquet`` shards; returns the shard paths.

    An empty input still writes one empty shard, so the directory reads as an empty dataset.
    Refuses a directory that already holds parquet files unless ``overwrite``; then shards left
    over from an earlier, larger write are removed.
    """
    if rows_per_shard < 1 or row_group_size < 1:
        raise ValueError("rows_per_shard and row_group_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = set(out.glob("*.parquet"))
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} parquet file(s); pass overwrite=True")
    written: list[Path] = []
    buffer: list[dict[str, Any]] = []
    for record in records:
        if validate:
            record.validate()
        buffer.append(record.to_row())
        if len(buffer) == rows_per_shard:
            written.append(_write_shard(buffer, out / SHARD_NAME.format(len(written)), row_group_size))
            buffer = []
    if buffer or not written:
        written.append(_write_shard(buffer, out / SHARD_NAME.format(len(written)), row_group_size))
    for stale in existing - set(written):
        stale.unlink()
    return written


def _write_shard(rows: list[dict[str, Any]], path: Path, row_group_size: int) -> Path:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The parquet files of a dataset (a file, or a directory's ``*.parquet`` in name order)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: no such file or directory")
    files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise DataError(f"{p}: no parquet files")
    return files


def _open(file: Path) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{file}: not a readable parquet file ({err})") from None
    if not parquet.schema_arrow.equals(SCHEMA):
        raise DataError(f"{file}: schema mismatch\nexpected:\n{SCHEMA}\nfound:\n{parquet.schema_arrow}")
    return parquet


def iter_batches(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the dataset as Arrow batches, one per row group, across shards in order."""
    for file, _, batch in _iter_row_groups(path, columns):
        yield batch


def _iter_row_groups(path: str | os.PathLike, columns: Sequence[str] | None
                     ) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
    """(file, index of the batch's first row in that file, batch) per row group."""
    for file in shard_files(path):
        parquet = _open(file)
        first_row = 0
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=list(columns) if columns else None)
            except (pa.ArrowException, OSError) as err:
                raise DataError(f"{file}: row group {group} is corrupt ({err})") from None
            yield file, first_row, pa.RecordBatch.from_pydict(
                {name: table.column(name).combine_chunks() for name in table.column_names})
            first_row += table.num_rows


def iter_records(path: str | os.PathLike) -> Iterator[Record]:
    """Stream Records; a bad row raises DataError naming the file and the row within it."""
    for file, first_row, batch in _iter_row_groups(path, None):
        for offset, row in enumerate(batch.to_pylist()):
            yield _record_from_row(row, f"{file}, row {first_row + offset}")


def read_records(path: str | os.PathLike) -> list[Record]:
    """All records of a dataset (file or shard directory)."""
    return list(iter_records(path))


def count_rows(path: str | os.PathLike) -> int:
    """Number of records, from the parquet footers only."""
    return sum(_open(file).metadata.num_rows for file in shard_files(path))


def _record_from_row(row: dict[str, Any], where: str) -> Record:
    try:
        return Record.from_row(row)
    except RecordError as err:
        raise DataError(f"{where}: {err}") from err


class RecordDataset:
    """A dataset held as one Arrow table: ``len``, ``dataset[i]`` and ``take(indices)`` decode Records on access."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        batches = [batch for _, _, batch in _iter_row_groups(path, None)]
        self.table = pa.Table.from_batches(batches, schema=SCHEMA)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records in {self.path}")
        index %= len(self)
        return _record_from_row(self.table.slice(index, 1).to_pylist()[0], f"{self.path}, row {index}")

    def take(self, indices: Sequence[int]) -> list[Record]:
        """Records at the given indices, in that order."""
        rows = self.table.take(pa.array(indices, type=pa.int64())).to_pylist()
        return [_record_from_row(row, f"{self.path}, row {i}") for i, row in zip(indices, rows)]

    @property
    def scales(self) -> list[str]:
        """The scale of every record, in order (what ``ScaleSampler`` indexes)."""
        return self.table.column("scale").to_pylist()
