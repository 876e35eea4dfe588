"""Whole source files (JSON lists, JSONL) -> ``out_dir/part-*.parquet`` Records with a report: every item
through `convert.convert_item`, every reject named in the rejects JSONL; shards are staged and published only
when the reject fraction is at most ``max_reject_fraction`` (0: strict), else ``TooManyRejects``."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spacevista import scales
from spacevista.datasets.official.convert import ConvertOptions, Reject, convert_item, item_id
from spacevista.records.io import write_records
from spacevista.records.schema import (
    Record,
)


class TooManyRejects(RuntimeError):
    """More records were rejected than the configured maximum fraction allows."""


@dataclass
class ConversionReport:
    total: int = 0
    converted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    scales: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    groups: Counter = field(default_factory=Counter)  # the source's data group / category as written
    shapes: Counter = field(default_factory=Counter)
    rejects_path: Path | None = None
    shards: list[Path] = field(default_factory=list)

    @property
    def reject_fraction(self) -> float:
        return sum(self.rejected.values()) / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "converted": self.converted, "rejected": dict(sorted(self.rejected.items())),
                "reject_fraction": self.reject_fraction, "scales": dict(sorted(self.scales.items())),
                "tasks": dict(sorted(self.tasks.items())), "groups": dict(sorted(self.groups.items())),
                "shapes": dict(sorted(self.shapes.items())), "rejects_path": str(self.rejects_path),
                "shards": [str(s) for s in self.shards]}


def iter_source(path: str | os.PathLike) -> Iterator[Any]:
    """Items of a JSON list file or a JSONL file; an unparsable JSONL line yields a Reject."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        yield from data
        return
    if isinstance(data, dict):  # a single record (or a one-line JSONL file)
        yield data
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                yield Reject("malformed_json", f"{p.name} line {number}: {err}")


def convert_dataset(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                    options: ConvertOptions = ConvertOptions(), *, max_reject_fraction: float = 0.05,
                    shard_size: int = 10_000, rejects_path: str | os.PathLike | None = None,
                    overwrite: bool = False) -> ConversionReport:
    """Convert source files to ``out_dir/part-*.parquet``; rejects go to ``rejects_path`` (default
    ``out_dir/rejects.jsonl``) and a summary to ``out_dir/conversion.json``. Without a
    ``media_root``, each file's relative frame paths resolve against that file's folder.

    Raises TooManyRejects (after writing the rejects file, publishing no shards) when the fraction of
    rejected items exceeds ``max_reject_fraction``.
    """
    out = Path(out_dir)
    if any(out.glob("*.parquet")) and not overwrite:
        raise FileExistsError(f"{out} already holds parquet files; pass overwrite=True")
    report = ConversionReport(rejects_path=Path(rejects_path) if rejects_path else out / "rejects.jsonl")
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    report.rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with open(report.rejects_path, "w", encoding="utf-8") as rejects:
        def records() -> Iterator[Record]:
            for source in inputs:
                file_options = options if options.media_root is not None else \
                    replace(options, media_root=Path(source).resolve().parent)
                for item in iter_source(source):
                    index = report.total
                    report.total += 1
                    try:
                        if isinstance(item, Reject):
                            raise item
                        record = convert_item(item, index, file_options)
                    except Reject as reject:
                        report.rejected[reject.reason] += 1
                        rejects.write(json.dumps({"index": index, "id": item_id(item), "reason": reject.reason,
                                                  "detail": reject.detail, "source": str(source)}) + "\n")
                        continue
                    except Exception as err:  # a shape of data no rule anticipates: say where it is
                        raise RuntimeError(f"{source}, item {index} (id {item_id(item)!r}): {err!r}") from err
                    report.converted += 1
                    report.scales[record.scale] += 1
                    report.tasks[record.task] += 1
                    report.groups[record.meta.get("group") or scales.SCALE_BY_NAME[record.scale].display] += 1
                    report.shapes[record.meta["source_shape"]] += 1
                    yield record

        staged = write_records(records(), staging, rows_per_shard=shard_size, validate=False)
    if report.reject_fraction > max_reject_fraction:
        shutil.rmtree(staging)
        raise TooManyRejects(f"{sum(report.rejected.values())} of {report.total} records rejected "
                             f"({report.reject_fraction:.1%} > max {max_reject_fraction:.1%}); by reason "
                             f"{dict(report.rejected)}; see {report.rejects_path}")
    for stale in out.glob("part-*.parquet"):
        stale.unlink()
    report.shards = [staged_file.replace(out / staged_file.name) for staged_file in staged]
    staging.rmdir()
    (out / "conversion.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
