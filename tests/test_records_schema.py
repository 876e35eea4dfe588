"""The Record schema: typed answers, the ground truth rewards receive, validation naming record and field."""

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from spacevista.records.schema import SCHEMA, Answer, Frame, Record, RecordError


def make_record(**changes) -> Record:
    fields = dict(
        id="rec-1", scale="indoor", task="object_distance",
        prompt=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "<video>\nHow far?"}],
        answer=Answer("numeric", "3.2", "m"),
        videos=[[Frame(bytes=b"\x89PNG..."), Frame(path="clips/a/1.png")]],
        meta={"reference": "<think>t</think><scale>indoor</scale><answer>3.2 m</answer>"},
    )
    fields.update(changes)
    return Record(**fields)


def test_to_row_matches_the_arrow_schema():
    table = pa.Table.from_pylist([make_record().to_row()], schema=SCHEMA)
    assert table.num_rows == 1 and table.schema.equals(SCHEMA)


def test_from_row_inverts_to_row():
    record = make_record(images=[Frame(path="/abs/photo.png")],
                         prompt=[{"role": "user", "content": "<image><video>\nHow far?"}], split="test", index=7,
                         source_id="src-9")
    assert Record.from_row(record.to_row()) == record


def test_ground_truth_is_json_with_a_typed_value_scale_and_task():
    truth = json.loads(make_record().to_row()["reward_model"]["ground_truth"])
    assert truth == {"type": "numeric", "value": 3.2, "unit": "m", "choices": [], "scale": "indoor",
                     "task": "object_distance"}


def test_count_and_choice_answers_are_typed():
    count = make_record(task="count", answer=Answer("count", "3"))
    choice = make_record(task="larger", answer=Answer("choice", "B", None, ["A. mug", "B. bowl"]))
    assert count.answer_dict()["value"] == 3
    assert choice.ground_truth_dict()["value"] == "B" and choice.ground_truth_dict()["choices"] == ["A. mug", "B. bowl"]


def test_answer_text_joins_value_and_unit():
    assert Answer("numeric", "12", "cm").text() == "12 cm"
    assert Answer("choice", "A", None, ["A. x", "B. y"]).text() == "A"


@pytest.mark.parametrize(("changes", "field"), [
    ({"scale": "underwater"}, "scale"),
    ({"task": "juggling"}, "task"),
    ({"answer": Answer("numeric", "far", "m")}, "answer.value"),
    ({"answer": Answer("numeric", "3", "m2")}, "answer.unit"),
    ({"answer": Answer("choice", "A", None, ["A. x", "B. y"])}, "answer.type"),
    ({"task": "larger", "answer": Answer("choice", "C", None, ["A. x", "B. y"])}, "answer.value"),
    ({"task": "count", "answer": Answer("count", "2.5")}, "answer.value"),
    ({"prompt": [{"role": "user", "content": "no placeholder"}]}, "prompt"),
    ({"prompt": [{"role": "robot", "content": "<video>"}]}, "prompt[0].role"),
    ({"videos": [[Frame(bytes=b"x", path="both.png")]]}, "videos[0][0]"),
    ({"videos": [[]]}, "videos[0]"),
])
def test_validate_names_the_record_and_the_field(changes, field):
    with pytest.raises(RecordError) as err:
        make_record(**changes).validate()
    assert err.value.record_id == "rec-1" and err.value.field == field
    assert "rec-1" in str(err.value) and field in str(err.value)


def test_from_row_rejects_a_ground_truth_that_disagrees_with_the_answer():
    row = make_record().to_row()
    row["reward_model"]["ground_truth"] = json.dumps({**json.loads(row["reward_model"]["ground_truth"]), "value": 9.9})
    with pytest.raises(RecordError, match="reward_model.ground_truth"):
        Record.from_row(row)


def test_data_layer_imports_neither_torch_nor_ray():
    code = ("import sys, spacevista.records, spacevista.datasets, spacevista.datasets.cli; "
            "print(sorted({'torch', 'ray'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
