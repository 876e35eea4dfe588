"""Synthetic all-scale records with exact ground truth, small enough for a tiny policy on CPU: the scenes of
`scenes`, drawn by `render`, as Records, splits and a cached parquet set.

Every record keeps in ``meta`` the exact value, the scene geometry and the reference completion
``scales.format_output(cue, scale, answer)`` for the SFT warm-up; its frames are the clip's crops.

Record i gets scale ``SCALES[i % 5]`` and task ``tasks[(i // 5) % len(tasks)]`` and its own
generator seeded by (seed, i), so the output is byte-identical for a seed and record i does not
depend on n. The held-out ``test`` split is a seeded random subset of the indices, balanced over the
(scale, task) cells.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from spacevista import scales
from spacevista.datasets.synthetic.render import render
from spacevista.datasets.synthetic.scenes import CUES, NAMES, QUESTIONS, SYNTH_TASKS, Scene, sample_scene
from spacevista.records.frames import encode_frame
from spacevista.records.io import write_records
from spacevista.records.schema import Frame, Record

DATA_SOURCE = "spacevista_synth"
SYNTH_VERSION = 1


def synth_records(n: int, seed: int = 0, *, frames: int = 4, size: int = 112, test_fraction: float = 0.1,
                  tasks: Sequence[str] = SYNTH_TASKS, instruction: bool = True) -> Iterator[Record]:
    """The n records in index order, each with ``split`` "train" or "test"."""
    _check_args(n, frames, size, test_fraction, tasks)
    test = held_out_indices(n, seed, test_fraction, len(scales.SCALES) * len(tasks))
    for i in range(n):
        yield synth_record(i, seed, frames=frames, size=size, tasks=tasks, instruction=instruction,
                           split="test" if i in test else "train")


def held_out_indices(n: int, seed: int, test_fraction: float, cells: int = 5 * len(SYNTH_TASKS)) -> set[int]:
    """round(n * test_fraction) seeded random indices, spread evenly over the (scale, task) cells (i % cells).

    Each cell's members are ranked at random; the test split takes rank 0 of every cell, then rank 1, ...
    (random order within a rank), so cells differ by at most one test record.
    """
    rng = np.random.default_rng([seed, 1])
    cell, key = np.arange(n) % cells, rng.random(n)
    by_cell = np.lexsort((key, cell))
    rank = np.empty(n, dtype=np.int64)
    rank[by_cell] = np.arange(n) - np.searchsorted(cell[by_cell], cell[by_cell])
    chosen = np.lexsort((rng.random(n), rank))[:round(n * test_fraction)]
    return {int(i) for i in chosen}


def synth_record(i: int, seed: int = 0, *, frames: int = 4, size: int = 112, tasks: Sequence[str] = SYNTH_TASKS,
                 instruction: bool = True, split: str = "train") -> Record:
    """Record i of the synthetic dataset for ``seed``."""
    rng = np.random.default_rng([seed, 0, i])
    scene = sample_scene(rng, scales.SCALES[i % len(scales.SCALES)], tasks[(i // len(scales.SCALES)) % len(tasks)],
                         size, frames)
    video = [encode_frame(Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)))
             for frame in render(scene, rng)]
    return _to_record(scene, i, seed, [video], split, instruction)


def _to_record(scene: Scene, i: int, seed: int, videos: list[list[Frame]], split: str, instruction: bool) -> Record:
    prompt = [{"role": "system", "content": scales.OUTPUT_INSTRUCTION}] if instruction else []
    prompt.append({"role": "user", "content": f"<video>\n{scene.question}"})
    meta = {"reference": scene.reference(), "exact": scene.exact, "ppm": scene.ppm, "size": scene.size,
            "canvas": list(scene.canvas), "offsets": [list(o) for o in scene.offsets],
            "objects": [asdict(o) for o in scene.objects]}
    return Record(id=f"synth-{seed}-{i:06d}", scale=scene.scale, task=scene.task, prompt=prompt,
                  answer=scene.answer, data_source=DATA_SOURCE, videos=videos, split=split, index=i, meta=meta)


def synthesize(out_dir: str | Path, n: int, seed: int = 0, *, frames: int = 4, size: int = 112,
               test_fraction: float = 0.1, tasks: Sequence[str] = SYNTH_TASKS, instruction: bool = True,
               rows_per_shard: int = 1000, overwrite: bool = False) -> dict:
    """Write ``out_dir/{train,test}/part-*.parquet`` and ``out_dir/manifest.json``; returns the manifest."""
    _check_args(n, frames, size, test_fraction, tasks)
    out = Path(out_dir)
    test = held_out_indices(n, seed, test_fraction, len(scales.SCALES) * len(tasks))
    options = dict(frames=frames, size=size, tasks=tasks, instruction=instruction)
    counts: dict[str, dict[str, Counter]] = {}
    for split, indices in (("train", [i for i in range(n) if i not in test]), ("test", sorted(test))):
        tally = counts[split] = {"scales": Counter(), "tasks": Counter()}
        records = (synth_record(i, seed, split=split, **options) for i in indices)
        write_records(_tallied(records, tally), out / split, rows_per_shard=rows_per_shard, overwrite=overwrite)
    manifest = {
        "generator": "spacevista.datasets.synthetic.synth", "version": SYNTH_VERSION, "data_source": DATA_SOURCE,
        "seed": seed, "n": n, "frames": frames, "size": size, "test_fraction": test_fraction,
        "tasks": list(tasks), "instruction": instruction,
        "splits": {split: {"count": sum(c["scales"].values()), "scales": dict(sorted(c["scales"].items())),
                           "tasks": dict(sorted(c["tasks"].items()))} for split, c in counts.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _tallied(records: Iterator[Record], tally: dict[str, Counter]) -> Iterator[Record]:
    for record in records:
        tally["scales"][record.scale] += 1
        tally["tasks"][record.task] += 1
        yield record


def _check_args(n: int, frames: int, size: int, test_fraction: float, tasks: Sequence[str]) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2 (the camera moves between frames), got {frames}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    unknown = [t for t in tasks if t not in QUESTIONS]
    if unknown or not tasks:
        raise ValueError(f"synthetic tasks must be a non-empty subset of {list(SYNTH_TASKS)}, got {list(tasks)}")


def tokenizer_corpus(samples: int = 400, seed: int = 0) -> list[str]:
    """Texts the tiny tokenizer is trained on: instruction, scale names, units, tags, questions, references."""
    texts = [scales.OUTPUT_INSTRUCTION, " ".join(scales.CHOICE_LETTERS), " ".join(str(d) for d in range(10))]
    texts += [f"{s.name} {s.display} {s.bench_category} {s.default_unit} {CUES[s.name]}" for s in scales.SCALE_SPECS]
    texts += [" ".join(scales.LENGTH_UNITS), " ".join(scales.AREA_UNITS), " ".join(NAMES),
              " ".join(t.name for t in scales.SYNTHETIC_TASK_SPECS)]
    for i in range(samples):
        rng = np.random.default_rng([seed, 2, i])
        scene = sample_scene(rng, scales.SCALES[i % len(scales.SCALES)],
                             SYNTH_TASKS[(i // len(scales.SCALES)) % len(SYNTH_TASKS)])
        texts += [f"<video>\n{scene.question}", scene.reference()]
    return texts
