"""Every row of a dataset checked before training, so that no row can crash a run when it is drawn.

A row passes when it reads back as a Record (schema, known scale and task, answer type, finite and
non-negative numbers, ground truth equal to the answer), its typed answer parses (`²` is a digit to
`str.isdigit`, not to `int`), the reward's ground-truth parser and the stepwise reward accept it (the
reference completion scores without an error), and every image and video frame decodes (paths
resolve as the training loop resolves them). Rows stream one row group at a time. A pass over an
unchanged file is cached by the files' sizes and modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spacevista.records.frames import FrameError, load_images, load_video
from spacevista.records.io import DataError, _iter_row_groups, shard_files
from spacevista.records.schema import Record, RecordError

VALIDATOR_VERSION = 1  # bump when a check changes: cached passes are then redone


@dataclass(frozen=True)
class Reject:
    """One bad row: where it is (file, row within the file, its index in the dataset) and why."""

    file: str
    row: int
    index: int
    id: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}, row {self.row} (record {self.id!r}), field {self.field!r}: {self.reason}"


@dataclass
class Validation:
    """What a pass found: the number of rows, the dataset indices that passed, and the rejects."""

    path: str
    rows: int = 0
    kept: list[int] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def check_row(row: dict[str, Any]) -> tuple[str, str] | None:
    """(field, reason) for a row that would fail when drawn, else None. Never raises."""
    from spacevista.rewards.stepwise import StepwiseReward
    from spacevista.grammar.truth import GroundTruthError, parse_ground_truth

    try:
        record = Record.from_row(row)
    except RecordError as err:
        return err.field, err.message
    except ValueError as err:  # the typed answer: e.g. a count written "²" (a digit to str.isdigit, not to int)
        return "answer.value", f"does not parse: {err}"
    except Exception as err:  # a malformed row must be reported, not raised
        return "?", f"{type(err).__name__}: {err}"
    try:
        record.answer.typed_value()
    except ValueError as err:
        return "answer.value", f"{record.answer.value!r} does not parse ({err})"
    try:
        truth = parse_ground_truth(record.ground_truth_dict())
        scored = StepwiseReward().score(truth, record.reference_completion())
        if scored.error is not None:
            return "reward_model.ground_truth", f"the reward cannot score it: {scored.error}"
    except (GroundTruthError, ValueError, ArithmeticError) as err:
        return "reward_model.ground_truth", f"{type(err).__name__}: {err}"
    for v in range(len(record.videos)):
        try:
            load_video(record, v)
        except (FrameError, OSError, ValueError) as err:
            return f"videos[{v}]", str(err)
    try:
        load_images(record)
    except (FrameError, OSError, ValueError) as err:
        return "images", str(err)
    return None


def validate_dataset(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Validation:
    """Check every row of the dataset at `path` (a parquet file or shard directory)."""
    key = _cache_key(path)
    cached = Path(cache_dir).expanduser() / f"{key}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        raw = json.loads(cached.read_text())
        return Validation(raw["path"], raw["rows"], raw["kept"], [Reject(**r) for r in raw["rejects"]])
    result = Validation(str(path))
    for file, first_row, batch in _iter_row_groups(path, None):
        for offset, row in enumerate(batch.to_pylist()):
            problem = check_row(row)
            if problem is None:
                result.kept.append(result.rows)
            else:
                result.rejects.append(Reject(str(file), first_row + offset, result.rows, str(row.get("id")), *problem))
            result.rows += 1
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**asdict(result)}))
        os.replace(tmp, cached)
    return result


def _cache_key(path: str | os.PathLike) -> str:
    h = hashlib.sha256(f"v{VALIDATOR_VERSION}|{os.getcwd()}".encode())  # relative frame paths resolve from cwd
    for file in shard_files(path):
        stat = file.stat()
        h.update(f"|{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def apply_policy(results: Sequence[Validation], policy: str, rejects_path: str | os.PathLike | None) -> None:
    """`fail`: raise DataError naming the first rejects (file, row, field); `skip`: write every reject
    to `rejects_path` (JSON lines) and return, leaving the callers to use only `kept` rows."""
    rejects = [r for result in results for r in result.rejects]
    if not rejects:
        return
    if policy == "fail":
        shown = "\n  ".join(str(r) for r in rejects[:10])
        more = f"\n  ... and {len(rejects) - 10} more" if len(rejects) > 10 else ""
        raise DataError(f"{len(rejects)} invalid row(s); fix them, or set data.invalid=skip to train without them "
                        f"(they are then listed in rejects.jsonl):\n  {shown}{more}")
    if rejects_path is not None:
        Path(rejects_path).parent.mkdir(parents=True, exist_ok=True)
        with Path(rejects_path).open("w") as out:
            for r in rejects:
                out.write(json.dumps(asdict(r)) + "\n")
    for result in results:
        if not result.kept:
            raise DataError(f"{result.path}: every one of its {result.rows} rows is invalid (see {rejects_path})")
