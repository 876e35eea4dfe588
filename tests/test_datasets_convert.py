"""SpaceVista-1M conversion on fixtures: good records mapped, every bad record reported with its reason."""

import json
from pathlib import Path

import pytest

from spacevista import scales
from spacevista.datasets.official.convert import ConvertOptions, convert_item
from spacevista.datasets.official.files import TooManyRejects, convert_dataset
from spacevista.records.io import read_records

FIXTURES = Path(__file__).parent / "fixtures" / "spacevista1m"
INPUTS = [FIXTURES / "records.json", FIXTURES / "records.jsonl"]
MEDIA = FIXTURES / "media"
OURS = ConvertOptions(media_root=MEDIA, output_format=scales.OutputFormat.THINK_SCALE_ANSWER)


@pytest.fixture()
def converted(tmp_path):
    report = convert_dataset(INPUTS, tmp_path, OURS, max_reject_fraction=1.0)
    return report, {r.id: r for r in read_records(tmp_path)}, tmp_path


def test_good_records_are_converted_across_scales(converted):
    report, records, _ = converted
    assert sorted(records) == [f"tv-000{i}" for i in range(1, 8)]
    assert report.converted == 7 and report.total == 17
    assert set(report.scales) == set(scales.SCALES)


@pytest.mark.parametrize(("record_id", "scale", "task", "answer"), [
    ("tv-0001", "tabletop", "width", ("numeric", "12", "cm", [])),
    ("tv-0002", "indoor", "object_distance", ("numeric", "3.2", "m", [])),
    ("tv-0003", "tiny_tabletop", "comparison_width", ("choice", "B", None, ["A. the screw", "B. the coin"])),
    ("tv-0004", "drone", "area", ("numeric", "1200", "m2", [])),
    ("tv-0005", "outdoor", "counting", ("count", "3", None, [])),
    ("tv-0006", "tabletop", "height", ("numeric", "15", "cm", [])),
    ("tv-0007", "indoor", "spatial_relation", ("choice", "B", None, ["A. left", "B. right"])),
])
def test_each_good_record_maps_scale_task_and_answer(converted, record_id, scale, task, answer):
    record = converted[1][record_id]
    a = record.answer
    assert (record.scale, record.task, (a.type, a.value, a.unit, a.choices)) == (scale, task, answer)


def test_prompt_is_the_user_turn_with_placeholders_and_the_output_instruction(converted):
    records = converted[1]
    assert records["tv-0002"].prompt == [
        {"role": "system", "content": scales.OUTPUT_INSTRUCTION},
        {"role": "user", "content": "<video>\nHow far apart are the sofa and the lamp?"}]
    assert records["tv-0003"].prompt[0]["content"].endswith(scales.OUTPUT_INSTRUCTION)
    assert records["tv-0006"].prompt[-1]["content"].startswith("<image>\n")


def test_frame_paths_resolve_against_the_media_root(converted):
    records = converted[1]
    assert [f.path for f in records["tv-0001"].videos[0]] == [str(MEDIA / f"clip_a/{i}.png") for i in range(3)]
    assert len(records["tv-0004"].videos) == 1 and records["tv-0006"].images[0].path == str(MEDIA / "photo.png")


def test_reference_completion_keeps_the_source_reasoning(converted):
    assert converted[1]["tv-0001"].meta["reference"] == scales.format_output(
        "the mug stands on a desk", "tabletop", "12 cm")


def test_rejects_report_names_each_bad_record_with_its_reason(converted):
    report, _, out = converted
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rejects if r["id"]} == {
        "bad-missing-answer": "missing_answer", "bad-unknown-scale": "unknown_scale",
        "bad-missing-frame": "missing_frame", "bad-non-numeric": "non_numeric_answer",
        "bad-malformed-messages": "malformed_messages", "bad-unknown-task": "unknown_task",
        "bad-choice": "bad_choice", "bad-unit": "bad_unit", "bad-invalid": "invalid_record"}
    assert [(r["index"], r["reason"]) for r in rejects if r["id"] is None] == [(16, "malformed_json")]
    assert sum(report.rejected.values()) == 10 and report.reject_fraction == pytest.approx(10 / 17)


def test_too_many_rejects_fails_after_writing_the_rejects_file_and_publishes_no_shards(tmp_path):
    with pytest.raises(TooManyRejects, match=r"10 of 17 records rejected \(58.8% > max 5.0%\)"):
        convert_dataset(INPUTS, tmp_path, OURS)
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 10
    assert not list(tmp_path.rglob("*.parquet"))


def test_bare_numeric_answer_takes_its_unit_from_the_question_else_the_scale():
    item = {"messages": [{"role": "user", "content": "How long is the rope in feet?"},
                         {"role": "assistant", "content": "<answer>7</answer>"}],
            "extra_info": {"category": "Outdoor", "question_type": "WIDTH"}}
    assert convert_item(item, 0).answer.unit == "ft"
    item["messages"][0]["content"] = "How long is the rope?"
    record = convert_item(item, 0)
    assert (record.answer.value, record.answer.unit, record.meta["unit_assumed"]) == ("7", "m", True)
