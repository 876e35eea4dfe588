"""Every shape the official SpaceVista repository documents converts: preview meta.json (scale from
--group), its flatten.py form, full-set items, SpaceVista-Bench entries; all 19 task types; each data
group; visual prompts kept on the sampled frames; bad items named with their reason."""

from __future__ import annotations

import json

import pytest
from spacevista_fixtures import GROUPS, OFFICIAL_NAMES, invalid_items, write_all

from spacevista import scales
from spacevista.cli import main
from spacevista.datasets.official.convert import ConvertOptions, convert_item
from spacevista.datasets.official.files import TooManyRejects, convert_dataset
from spacevista.records.io import read_records
from spacevista.rewards.stepwise import compute_score


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("spacevista"))


def convert(files, shape, tmp_path, **options):
    report = convert_dataset([files[shape]], tmp_path / shape, ConvertOptions(**options), max_reject_fraction=1.0)
    return report, {r.source_id: r for r in read_records(tmp_path / shape)}


@pytest.mark.parametrize("shape", ["preview", "flattened", "full", "bench"])
def test_every_valid_item_of_each_documented_shape_converts_with_all_19_task_types(files, shape, tmp_path):
    options = {"default_scale": "tabletop"} if shape in ("preview", "flattened") else {}
    report, records = convert(files, shape, tmp_path, **options)
    assert (report.converted, report.total, dict(report.rejected)) == (19, 19, {})
    assert {r.meta["source_task"] for r in records.values()} == set(OFFICIAL_NAMES)
    assert {scales.TASK_BY_NAME[r.task].official for r in records.values()} == set(OFFICIAL_NAMES)
    # flatten.py leaves an item without annotations as it was: those read as preview items
    expected = {"flattened": 16, "preview": 3} if shape == "flattened" else {shape: 19}
    assert report.shapes == expected


def test_preview_items_name_no_scale_so_the_file_needs_a_group(files, tmp_path):
    report, _ = convert(files, "preview", tmp_path)
    assert report.rejected == {"unknown_scale": 19}
    line = json.loads((tmp_path / "preview" / "rejects.jsonl").read_text().splitlines()[0])
    assert line["id"] == "pv-00" and "--scale or --group" in line["detail"]


def test_flattened_items_convert_to_the_same_records_as_the_nested_preview(files, tmp_path):
    _, nested = convert(files, "preview", tmp_path, default_scale="indoor")
    _, flat = convert(files, "flattened", tmp_path, default_scale="indoor")
    assert nested.keys() == flat.keys()
    for key, record in nested.items():
        other = flat[key]
        assert (record.task, record.answer, record.prompt) == (other.task, other.answer, other.prompt)
        assert record.meta.get("visual_prompts") == other.meta.get("visual_prompts"), key


def test_scale_comes_from_the_data_group_category_or_scale_symbol(files, tmp_path):
    report, records = convert(files, "full", tmp_path)
    assert set(report.groups) == set(GROUPS)
    assert records["full-03"].meta["group"] == "Wild Indoor" and records["full-03"].scale == "indoor"
    assert records["full-05"].scale == "drone"
    _, bench = convert(files, "bench", tmp_path)
    assert {(r.meta["group"], r.scale) for r in bench.values()} == {
        ("TinyTabletop", "tiny_tabletop"), ("Tabletop", "tabletop"), ("Indoor", "indoor"), ("Outdoor", "outdoor")}
    entry = json.loads(files["bench"].read_text())[0]
    del entry["metadata"]["category"]  # the scale symbol alone ("mm") is enough
    assert convert_item(entry, 0, ConvertOptions(media_root=files["bench"].parent)).scale == "tiny_tabletop"


def test_answer_types_follow_the_task_and_the_bench_reading(files, tmp_path):
    _, records = convert(files, "bench", tmp_path)
    by_task = {r.meta["source_task"]: r for r in records.values()}
    assert (by_task["EXISTENCE"].answer.type, by_task["EXISTENCE"].answer.value) == ("text", "Yes")
    assert (by_task["APPEAR_ORDER"].answer.type, by_task["APPEAR_ORDER"].answer.value) == ("choice", "D")
    assert by_task["CAMERA_ROTATION"].answer.unit == "deg" and by_task["OBJECT_ROTATION"].answer.value == "45"
    assert by_task["ROOM_SIZE"].answer.unit == "m2"
    counting = by_task["COUNTING"]
    assert (counting.answer.type, counting.ground_truth_dict()["count_metric"]) == ("count", "mra")
    assert by_task["HEIGHT"].task == "height" and by_task["WIDTH"].task == "width"


def test_bench_prompt_is_the_question_with_the_bench_answer_format_sentence(files, tmp_path):
    _, records = convert(files, "bench", tmp_path)
    record = records["100"]
    assert [m["role"] for m in record.prompt] == ["user"]  # the bench sentence already asks for <answer>
    content = record.prompt[0]["content"]
    assert content.startswith("<video>\nWhich object appears first?")
    assert content.endswith("single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.")
    assert record.meta["question"].startswith("Which object appears first?")


def test_visual_prompts_move_to_the_nearest_sampled_frame(files, tmp_path):
    _, records = convert(files, "bench", tmp_path, num_frames=4)  # frames 0, 2, 4, 7 of 8 are kept
    record = records["100"]  # a point on frame 2
    assert len(record.videos[0]) == 4 and record.meta["frame_indices"] == [0, 2, 4, 7]
    assert [(p["kind"], p["frame"]) for p in record.meta["visual_prompts"]] == [("point", 1)]
    dual = records["102"]  # dual boxes: source on frame 0, targets on frame 7
    assert [(p["color"], p["frame"]) for p in dual.meta["visual_prompts"]] == [("red", 0), ("blue", 3), ("green", 3)]
    mask = records["103"]
    assert mask.meta["visual_prompts"][0]["mask_path"] == str(files["bench"].parent / "scenes/bench/mask.npy")


def test_each_invalid_item_is_named_with_its_reason(files, tmp_path):
    report, _ = convert(files, "invalid", tmp_path)
    rejects = [json.loads(line) for line in (tmp_path / "invalid" / "rejects.jsonl").read_text().splitlines()]
    expected = {item["id"]: reason for item, reason in invalid_items(_frame_paths(files))}
    assert {r["id"]: r["reason"] for r in rejects} == expected
    assert report.converted == 0


def test_strict_conversion_fails_on_one_bad_item_and_a_realistic_file_does_not(files, tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    lines = files["full"].read_text().splitlines() * 2 + files["invalid"].read_text().splitlines()[:1]
    mixed.write_text("\n".join(lines) + "\n")
    root = ConvertOptions(media_root=files["full"].parent)
    report = convert_dataset([mixed], tmp_path / "ok", root, max_reject_fraction=0.05)
    assert (report.converted, report.rejected) == (38, {"unknown_scale": 1})
    with pytest.raises(TooManyRejects, match="1 of 39 records rejected"):
        convert_dataset([mixed], tmp_path / "strict", root, max_reject_fraction=0.0)


def test_spacevista_format_completions_get_format_and_answer_credit(files, tmp_path):
    _, records = convert(files, "bench", tmp_path)
    by_task = {r.meta["source_task"]: r for r in records.values()}
    truth = by_task["DEPTH"].ground_truth_json()  # 2.5 m
    right = "<think>about two and a half</think><answer>2.5</answer>"
    assert compute_score("spacevista_bench", right, truth)["score"] == 1.0
    wrong_format = compute_score("spacevista_bench", "2.5", truth)
    assert wrong_format["format"] == 0.0 and wrong_format["score"] == 0.0
    counting = by_task["COUNTING"].ground_truth_json()  # 4, scored by MRA as the bench does
    # |3 - 4| / 4 = 0.25: within 1 - t for t = 0.50 .. 0.75, 6 of 10 thresholds
    assert compute_score("spacevista_bench", "<think>x</think><answer>3</answer>", counting)["accuracy"] == 0.6
    existence = by_task["EXISTENCE"].ground_truth_json()
    assert compute_score("spacevista_bench", "<think>x</think><answer>yes</answer>", existence)["score"] == 1.0


def test_cli_converts_the_preview_with_a_group_and_fails_strictly_without(files, tmp_path, capsys):
    assert main(["data", "convert", str(files["preview"]), "--out", str(tmp_path / "a"), "--group", "Wild Indoor"]) == 0
    assert {r.scale for r in read_records(tmp_path / "a")} == {"indoor"}
    assert "19 of 19 converted" in capsys.readouterr().out.replace("\n", " ")
    assert main(["data", "convert", str(files["preview"]), "--out", str(tmp_path / "b")]) == 1
    assert "19 of 19 records rejected" in capsys.readouterr().out.replace("\n", " ")


def _frame_paths(files):
    from spacevista_fixtures import N_FRAMES, SCENES
    return {s: [f"scenes/{s}/images/frame_{i:03d}.png" for i in range(N_FRAMES)] for s in SCENES}
