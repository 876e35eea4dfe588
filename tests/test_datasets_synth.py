"""Synthetic all-scale scenes: deterministic, complete, exact ground truth, scale visible in the background."""

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from spacevista import scales
from spacevista.datasets.synthetic.scenes import COLORS, CUES, PPM_JITTER, SYNTH_TASKS, VIEW_M
from spacevista.datasets.synthetic.synth import synth_record, synth_records, synthesize, tokenizer_corpus
from spacevista.records.frames import load_video
from spacevista.records.io import read_records

N_ALL = 5 * len(SYNTH_TASKS)  # one record per (scale, task)


@pytest.fixture(scope="module")
def records():
    return list(synth_records(2 * N_ALL, seed=11, size=64, test_fraction=0.0))


def test_same_seed_writes_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        synthesize(tmp_path / name, 12, seed=3, size=48)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_different_seeds_give_different_scenes():
    a, b = synth_record(0, seed=1, size=48), synth_record(0, seed=2, size=48)
    assert a.videos[0][0].bytes != b.videos[0][0].bytes


def test_record_i_does_not_depend_on_n():
    assert list(synth_records(3, seed=5, size=48, test_fraction=0.0))[2] == synth_record(2, seed=5, size=48)


def test_every_scale_and_task_appears_with_a_typed_valid_answer(records):
    assert Counter((r.scale, r.task) for r in records) == {(s, t): 2 for s in scales.SCALES for t in SYNTH_TASKS}
    for record in records:
        record.validate()
        assert record.answer.type == scales.TASK_BY_NAME[record.task].answer_type.value


def test_numeric_answers_use_the_scale_default_unit(records):
    for record in records:
        unit = scales.SCALE_BY_NAME[record.scale].default_unit
        if record.task == "area":
            assert record.answer.unit == unit + "2"
        elif record.answer.type == "numeric":
            assert record.answer.unit == unit


def test_splits_are_disjoint_and_sized_and_the_manifest_counts_them(tmp_path):
    manifest = synthesize(tmp_path, 40, seed=0, size=48, test_fraction=0.25)
    train, test = read_records(tmp_path / "train"), read_records(tmp_path / "test")
    assert len(test) == 10 and len(train) == 30
    assert not {r.id for r in train} & {r.id for r in test}
    assert {r.split for r in train} == {"train"} and {r.split for r in test} == {"test"}
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["splits"]["test"]["count"] == 10
    assert sum(manifest["splits"]["train"]["scales"].values()) == 30


def _remeasure(record):
    """The answer recomputed from the scene geometry kept in meta."""
    meta = record.meta
    objects = {o["name"]: o for o in meta["objects"]}
    center = {name: (o["x0"] + o["w"] / 2, o["y0"] + o["h"] / 2) for name, o in objects.items()}
    question = record.prompt[-1]["content"]
    names = re.findall(r"(?:the|[AB]\.) (\w+ (?:block|disc))", question)
    unit = record.answer.unit
    if record.task == "object_size":
        o = objects[names[0]]
        return scales.convert(max(o["w"], o["h"]) / meta["ppm"], "m", unit)
    if record.task == "area":
        o = objects[names[0]]
        pixels = math.pi * o["w"] ** 2 / 4 if o["name"].endswith("disc") else o["w"] * o["h"]
        return scales.convert(pixels / meta["ppm"] ** 2, "m2", unit)
    if record.task == "object_distance":
        return scales.convert(math.dist(center[names[0]], center[names[1]]) / meta["ppm"], "m", unit)
    if record.task == "camera_displacement":
        return scales.convert(math.dist(meta["offsets"][0], meta["offsets"][-1]) / meta["ppm"], "m", unit)
    if record.task == "count":
        target = re.search(r"How many (\w+ \w+)s", question).group(1)
        return sum(o["name"] == target for o in meta["objects"])
    if record.task == "relative_direction":
        return "A" if center[names[0]][0] < center[names[1]][0] else "B"
    if record.task == "closer":
        ref, a, b = names
        return "A" if math.dist(center[ref], center[a]) < math.dist(center[ref], center[b]) else "B"
    if record.task == "larger":
        area = {n: math.pi * o["w"] ** 2 / 4 if n.endswith("disc") else o["w"] * o["h"] for n, o in objects.items()}
        return "A" if area[names[0]] > area[names[1]] else "B"
    raise AssertionError(record.task)


def test_ground_truth_matches_the_scene_geometry(records):
    for record in records:
        expected = _remeasure(record)
        if record.answer.type == "numeric":
            assert record.answer.typed_value() == pytest.approx(expected, rel=0.005), record.id
            assert record.meta["exact"] == pytest.approx(expected)
        else:
            assert record.answer.typed_value() == expected, record.id


def test_objects_are_drawn_where_the_scene_says(records):
    for record in (r for r in records if r.task == "object_size"):
        target = re.search(r"the (\w+ \w+)\?", record.prompt[-1]["content"]).group(1)
        o = next(o for o in record.meta["objects"] if o["name"] == target)
        x, y = record.meta["offsets"][0]
        frame = np.asarray(load_video(record)[0])
        row = frame[o["y0"] - y + o["h"] // 2, o["x0"] - x:o["x0"] - x + o["w"]]
        inside = np.all(row == COLORS[target.split()[0]], axis=1)
        assert inside[o["w"] // 2] and inside.sum() >= o["w"] - 3, record.id


def test_pixels_per_metre_separate_the_scales(records):
    ranges = {s: [r.meta["ppm"] for r in records if r.scale == s] for s in scales.SCALES}
    for s, ppms in ranges.items():
        nominal = 64 / VIEW_M[s]
        assert nominal * (1 - PPM_JITTER) <= min(ppms) and max(ppms) <= nominal * (1 + PPM_JITTER)
    for near, far in zip(scales.SCALES, scales.SCALES[1:]):
        assert min(ranges[near]) > 3 * max(ranges[far])


def test_background_statistics_differ_across_scales(records):
    means = {}
    for s in scales.SCALES:
        frames = [np.asarray(f, dtype=float) for r in records if r.scale == s for f in load_video(r)]
        means[s] = np.mean([f.reshape(-1, 3).mean(axis=0) for f in frames], axis=0)
    for i, a in enumerate(scales.SCALES):
        for b in scales.SCALES[i + 1:]:
            assert np.linalg.norm(means[a] - means[b]) > 15, (a, b)


def test_prompt_is_a_short_video_question_under_the_output_instruction(records):
    for record in records:
        system, user = record.prompt
        assert system == {"role": "system", "content": scales.OUTPUT_INSTRUCTION}
        assert user["role"] == "user" and user["content"].startswith("<video>\n") and len(user["content"]) < 90
        assert len(record.videos) == 1 and len(record.videos[0]) == 4


def test_reference_completion_names_the_cue_scale_and_answer(records):
    for record in records:
        assert record.meta["reference"] == scales.format_output(CUES[record.scale], record.scale, record.answer.text())


def test_frames_and_size_are_parameters():
    record = synth_record(0, seed=0, frames=3, size=40, instruction=False)
    assert [f.size for f in load_video(record)] == [(40, 40)] * 3 and record.prompt[0]["role"] == "user"


def test_tokenizer_corpus_covers_every_word_of_prompts_and_references(records):
    corpus = tokenizer_corpus(samples=2 * N_ALL)
    words = set(re.findall(r"[A-Za-z_]+", " ".join(corpus)))
    assert scales.OUTPUT_INSTRUCTION in corpus
    for record in records:
        text = record.prompt[-1]["content"] + record.meta["reference"]
        assert set(re.findall(r"[A-Za-z_]+", text)) <= words, record.id


def test_test_split_is_balanced_over_scales_and_tasks():
    test = [r for r in synth_records(4 * N_ALL, seed=2, size=32, test_fraction=0.3) if r.split == "test"]
    cells = Counter((r.scale, r.task) for r in test)
    assert len(test) == 48 and len(cells) == N_ALL and set(cells.values()) == {1, 2}
