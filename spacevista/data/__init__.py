"""Data layer: Record schema, parquet IO, lazy frames, scale sampler, SpaceVista-1M converter, synthetic scenes.

Pure: numpy, pyarrow and PIL only (no ray, no torch).
"""

from spacevista.data.convert import ConversionReport, TooManyRejects, convert_dataset
from spacevista.data.frames import FrameError, decode_frame, load_images, load_video
from spacevista.data.io import (DataError, RecordDataset, count_rows, iter_batches, iter_records, read_records,
                                write_records)
from spacevista.data.sampler import ScaleSampler
from spacevista.data.schema import SCHEMA, Answer, Frame, Record, RecordError
from spacevista.data.synth import synth_records, synthesize, tokenizer_corpus

__all__ = [
    "SCHEMA", "Answer", "ConversionReport", "DataError", "Frame", "FrameError", "Record", "RecordDataset",
    "RecordError", "ScaleSampler", "TooManyRejects", "convert_dataset", "count_rows", "decode_frame", "iter_batches",
    "iter_records", "load_images", "load_video", "read_records", "synth_records", "synthesize", "tokenizer_corpus",
    "write_records",
]
