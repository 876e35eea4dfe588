"""Records: the one QA unit every role shares, at run time.

`schema` (the Record, its Arrow/parquet columns as verl reads them), `io` (streaming parquet reader and
writer), `frames` (images, frame folders and video files decoded lazily, visual prompts drawn on them),
`visual_prompts` (points, boxes and masks and how they are drawn), `sampler` (per-scale batches),
`validate` (every row checked, and named, before training). The dataset makers (`spacevista.datasets`)
write records; nothing here knows them. Pure: numpy, pyarrow and PIL (no torch, no Ray).

Names resolve lazily (`from spacevista.records import Record` loads `records.schema` only).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "schema": ("SCHEMA", "Answer", "Frame", "Record", "RecordError"),
    "io": ("DataError", "RecordDataset", "count_rows", "iter_batches", "iter_records", "read_records",
           "write_records"),
    "frames": ("FrameError", "decode_frame", "load_images", "load_video"),
    "sampler": ("ScaleSampler",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
