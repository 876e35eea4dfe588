"""`rewards score` never stops on one bad line: each is named by number, the rest scored, the output strict JSON."""

import json

from spacevista.rewards import cli
from spacevista.rewards.cli import run_cli
from spacevista.scales import format_output

RECORD = {"scale": "indoor", "task": "object_size",
          "answer": {"type": "numeric", "value": 3.2, "unit": "m", "choices": None}}
GOOD = json.dumps({"completion": format_output("t", "indoor", "3.2 m"), "record": RECORD}).encode()


def _score(tmp_path, lines: list[bytes]) -> tuple[int, list[dict]]:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    code = run_cli(["rewards", "score", str(source), "--out", str(out)])
    rows = [json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            for line in out.read_text().splitlines()]
    return code, rows


def test_invalid_utf8_deep_nesting_and_nan_are_named_and_the_rest_scored(tmp_path, capsys):
    deep = b"[" * 100_000 + b"]" * 100_000
    nan = GOOD.replace(b"3.2,", b"NaN,")
    code, rows = _score(tmp_path, [GOOD, b"\xff\xfe not utf-8", deep, nan, GOOD])
    assert code == 0 and len(rows) == 5
    assert [r.get("line") for r in rows] == [None, 2, 3, 4, None]
    assert rows[1]["error"].startswith("not UTF-8") and rows[2]["error"] == "invalid JSON: nested too deeply"
    assert "NaN is not JSON" in rows[3]["error"] and rows[0]["score"] == rows[4]["score"] == 1.0
    err = capsys.readouterr().err
    assert "line 2:" in err and "line 3:" in err and "line 4:" in err


def test_a_huge_line_is_skipped_without_stopping(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "MAX_LINE_BYTES", 1000)
    code, rows = _score(tmp_path, [GOOD, b'{"completion": "' + b"x" * 5000 + b'"}', GOOD])
    assert code == 0 and [r.get("error", "ok") for r in rows] == ["ok", "line longer than 1000 bytes", "ok"]


def test_nothing_scored_exits_non_zero(tmp_path, capsys):
    code, rows = _score(tmp_path, [b"\xff", b"{not json"])
    assert code == 2 and len(rows) == 2
    assert "no line of" in capsys.readouterr().err
