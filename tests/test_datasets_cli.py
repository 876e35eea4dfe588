"""`spacevista data synth | convert` through argparse, as the top-level CLI wires it."""

import argparse
import io
from pathlib import Path

from rich.console import Console

from spacevista.datasets.cli import add_subparser, run
from spacevista.records.io import count_rows

FIXTURES = Path(__file__).parent / "fixtures" / "spacevista1m"


def invoke(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="spacevista")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    code = args.func(args, Console(file=out, width=120))
    return code, out.getvalue()


def test_synth_command_writes_splits_and_prints_a_summary(tmp_path):
    code, printed = invoke(["data", "synth", "--out", str(tmp_path), "--n", "10", "--seed", "1", "--size", "48",
                            "--frames", "2", "--test-fraction", "0.2"])
    assert code == 0 and count_rows(tmp_path / "train") == 8 and count_rows(tmp_path / "test") == 2
    assert "manifest.json" in printed and "tiny_tabletop" in printed


def test_convert_command_reports_rejects_and_exits_nonzero_over_the_threshold(tmp_path):
    inputs = [str(FIXTURES / "records.json"), str(FIXTURES / "records.jsonl")]
    code, printed = invoke(["data", "convert", *inputs, "--out", str(tmp_path / "ok"),
                            "--media-root", str(FIXTURES / "media"), "--max-reject-fraction", "0.9"])
    assert code == 0 and count_rows(tmp_path / "ok") == 7
    assert "7 of 17 converted" in printed and "rejects.jsonl" in printed and "missing_frame" in printed
    code, printed = invoke(["data", "convert", *inputs, "--out", str(tmp_path / "fail"),
                            "--media-root", str(FIXTURES / "media")])
    assert code == 1 and "conversion failed" in printed


def test_run_is_callable_with_a_namespace(tmp_path):
    args = argparse.Namespace(data_command="synth", out=tmp_path, n=5, seed=0, frames=2, size=48, test_fraction=0.0,
                              no_instruction=True, shard_size=2, overwrite=False)
    assert run(args, Console(file=io.StringIO())) == 0
    assert count_rows(tmp_path / "train") == 5 and len(list((tmp_path / "train").glob("*.parquet"))) == 3
