"""`spacevista rewards list | score`."""

import argparse
import json

import pytest

from reward_helpers import GOOD, RECORD
from spacevista.rewards.cli import add_subparser, run_cli

pytestmark = pytest.mark.usefixtures("isolated_registry")  # tests/conftest.py


def score(tmp_path, *lines, extra=()):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    code = run_cli(["rewards", "score", str(source), "--out", str(out), *extra])
    return code, [json.loads(line) for line in out.read_text().splitlines()]


def row(completion=GOOD, record=RECORD):
    return json.dumps({"completion": completion, "record": record})


def test_add_subparser_registers_rewards_on_an_existing_parser():
    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rewards", "score", "in.jsonl", "--out", "o.jsonl", "--plugin", "a", "--plugin", "b"])
    assert (args.reward, args.plugin, callable(args.func)) == ("stepwise", ["a", "b"], True)


def test_list_shows_builtins(capsys):
    assert run_cli(["rewards", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("stepwise", "numeric", "choice"))


def test_score_adds_total_and_breakdown_to_each_line(tmp_path):
    code, rows = score(tmp_path, row())
    assert code == 0
    assert (rows[0]["score"], rows[0]["breakdown"], rows[0]["record"]) == \
        (1.0, {"format": 1.0, "scale": 1.0, "numeric": 1.0}, RECORD)


def test_score_prints_a_per_scale_table(tmp_path, capsys):
    score(tmp_path, row(), row(record={**RECORD, "scale": "drone"}))
    out = capsys.readouterr().out
    assert "reward per scale" in out and "indoor" in out and "drone" in out


def test_invalid_json_line_becomes_an_error_row_and_the_rest_go_on(tmp_path, capsys):
    code, rows = score(tmp_path, row(), "{oops", row())
    assert (code, [r["score"] for r in rows]) == (0, [1.0, 0.0, 1.0])
    assert rows[1]["line"] == 2 and rows[1]["error"].startswith("invalid JSON")
    assert "line 2: invalid JSON" in capsys.readouterr().err


def test_line_without_completion_is_an_error_row(tmp_path):
    _, rows = score(tmp_path, json.dumps({"record": RECORD}))
    assert (rows[0]["score"], rows[0]["error"]) == (0.0, "missing field 'completion' (a string)")


def test_record_without_task_is_an_error_row_with_its_line_number(tmp_path, capsys):
    _, rows = score(tmp_path, row(), row(record={"scale": "indoor", "answer": RECORD["answer"]}))
    assert (rows[1]["line"], rows[1]["error"]) == (2, "ground truth: ground truth lacks 'task'")
    assert "line 2: ground truth: ground truth lacks 'task'" in capsys.readouterr().err


def test_plugin_from_a_file_adds_a_component(tmp_path):
    plugin = tmp_path / "brevity.py"
    plugin.write_text("def brevity(data_source, solution_str, ground_truth, extra_info):\n    return 0.0\n")
    _, rows = score(tmp_path, row(), extra=("--plugin", f"{plugin}:brevity"))
    assert (rows[0]["breakdown"]["brevity"], rows[0]["score"]) == (0.0, 0.5)


def test_named_main_reward_replaces_stepwise(tmp_path):
    _, rows = score(tmp_path, row(GOOD + " bye"), extra=("--reward", "format"))
    assert rows[0]["breakdown"] == {"format": 0.0}


def test_unloadable_plugin_exits_with_an_error(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(row() + "\n")
    assert run_cli(["rewards", "score", str(source), "--out", str(tmp_path / "o.jsonl"), "--plugin", "nope:fn"]) == 2
    assert "cannot load reward 'nope:fn'" in capsys.readouterr().err


def test_missing_input_file_exits_with_an_error(tmp_path, capsys):
    assert run_cli(["rewards", "score", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "no file" in capsys.readouterr().err
