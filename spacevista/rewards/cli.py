"""`spacevista rewards list | score`: the rewards subcommand, wired into the main CLI by
`add_subparser`; each handler takes the parsed args and returns an exit code (`args.func(args)`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from spacevista.configs.schema import PluginConfig, RewardConfig
from spacevista.rewards.pipeline import STEPWISE, RewardPipeline
from spacevista.rewards.registry import PluginLoadError, available_rewards
from spacevista.rewards.stepwise import (
    RewardBreakdown,
    aggregate_breakdowns,
    error_breakdown,
)
from spacevista.scales import SCALES, AnswerType

CHUNK_LINES = 1024  # lines scored per score_batch call
MAX_LINE_BYTES = 16 << 20  # a longer line is rejected (and skipped without holding it in memory)
EXIT_NOTHING_SCORED = 2


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `rewards` with its `list` and `score` subcommands."""
    parser = subparsers.add_parser("rewards", help="list rewards; score completions from a JSONL file")
    commands = parser.add_subparsers(dest="rewards_command", required=True)
    commands.add_parser("list", help="built-in, registered and entry-point rewards").set_defaults(func=list_rewards)
    score = commands.add_parser(
        "score", help='score {"completion", "record"} lines; writes score + breakdown',
        description='Each input line is a JSON object {"completion": "<think>..</think>...<answer>3.2 m</answer>", '
                    '"record": GROUND_TRUTH}, GROUND_TRUTH being what a parquet row holds in '
                    'reward_model.ground_truth: {"scale": "indoor", "task": "object_size", "type": "numeric", '
                    '"value": 3.2, "unit": "m", "choices": []} (optionally "output_format", "count_metric"). '
                    'Each output line is the input object plus "score", "breakdown" and "reasons".')
    score.add_argument("file", type=Path, help="input JSONL")
    score.add_argument("--out", type=Path, required=True, help="output JSONL")
    score.add_argument("--reward", default=STEPWISE, help="main reward: a name or a plugin spec (default: stepwise)")
    score.add_argument("--plugin", action="append", default=[], metavar="SPEC",
                       help="extra reward (name, module:function or file.py:function), weight 1; repeatable")
    score.set_defaults(func=score_file)
    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """`spacevista rewards ...` on its own: parse `argv` (starting at "rewards") and run."""
    parser = argparse.ArgumentParser(prog="spacevista")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def list_rewards(args: argparse.Namespace) -> int:
    table = Table("reward", "source", title="rewards")
    for name, source in sorted(available_rewards().items()):
        table.add_row(name, source)
    Console().print(table)
    return 0


def score_file(args: argparse.Namespace) -> int:
    """Score every line of args.file into args.out; a bad line becomes an error row (score 0)."""
    errors = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
    if not args.file.is_file():
        errors.print(f"error: no file {args.file}")
        return 2
    try:
        pipeline = RewardPipeline(RewardConfig(plugins=[PluginConfig(s) for s in args.plugin]), main=args.reward)
    except (PluginLoadError, ValueError) as err:
        errors.print(f"error: {err}")
        return 2
    breakdowns: list[RewardBreakdown] = []
    try:
        with args.file.open("rb") as source, args.out.open("w", encoding="utf-8") as out:
            lines = (item for item in _read_lines(source) if not isinstance(item[1], str) or item[1].strip())
            while chunk := list(islice(lines, CHUNK_LINES)):
                breakdowns += _score_chunk(pipeline, chunk, out, errors)
    finally:
        pipeline.close()
    Console().print(_summary_table(breakdowns, pipeline))
    bad = sum(b.error is not None for b in breakdowns)
    unread = sum(b.error is not None and b.scale is None and not b.components for b in breakdowns)
    Console().print(f"scored {len(breakdowns)} lines into {args.out}" + (f", {bad} with errors" if bad else ""))
    if len(breakdowns) == unread:
        errors.print(f"error: no line of {args.file} could be scored")
        return EXIT_NOTHING_SCORED
    return 0


def _read_lines(source: IO[bytes]) -> Iterator[tuple[int, str | Exception]]:
    """(line number, text) per line; (line number, the reason) for a line that is too long or not UTF-8."""
    n = 0
    while raw := source.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := source.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the remainder of the long line
            yield n, ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield n, ValueError(f"not UTF-8 (byte {err.start}: {err.reason})")


def _score_chunk(pipeline: RewardPipeline, chunk: list[tuple[int, str | Exception]], out: IO[str],
                 errors: Console) -> list[RewardBreakdown]:
    rows: list[tuple[int, dict[str, Any], str | None]] = [
        (n, {}, str(line)) if isinstance(line, Exception) else (n, *_read_row(line)) for n, line in chunk]
    scored = iter(pipeline.score_batch((row["record"], row["completion"], "", None)
                                       for _, row, error in rows if error is None))
    breakdowns = []
    for n, row, error in rows:
        breakdown = error_breakdown(error) if error is not None else next(scored)
        if breakdown.error is not None:
            errors.print(f"line {n}: {breakdown.error}")
        row.update(score=breakdown.total, breakdown=breakdown.components, reasons=breakdown.reasons)
        if breakdown.error is not None:
            row.update(line=n, error=breakdown.error)
        try:
            text = json.dumps(row, allow_nan=False)
        except (ValueError, TypeError, RecursionError) as err:  # strict JSON out, whatever came in
            text = json.dumps({"line": n, "score": 0.0, "error": f"row cannot be written as JSON: {err}"})
        out.write(text + "\n")
        breakdowns.append(breakdown)
    return breakdowns


def _read_row(line: str) -> tuple[dict[str, Any], str | None]:
    """(row, None) for a usable line, else (what could be read, the reason)."""
    try:
        row = json.loads(line, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as err:
        return {}, f"invalid JSON: {err}"
    except RecursionError:
        return {}, "invalid JSON: nested too deeply"
    if not isinstance(row, dict):
        return {}, f"line is a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("completion"), str):
        return row, "missing field 'completion' (a string)"
    if not isinstance(row.get("record"), dict):
        return row, "missing field 'record' (an object)"
    return row, None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _summary_table(breakdowns: list[RewardBreakdown], pipeline: RewardPipeline) -> Table:
    rows = aggregate_breakdowns(breakdowns, by="scale")
    names = ("format", "scale", *(t.value for t in AnswerType), *([pipeline.main.name] if pipeline.main else []),
             *(p.name for p in pipeline.plugins))
    components = [c for c in dict.fromkeys(names) if any(c in row for row in rows.values())]
    table = Table("scale", "n", "total", *components, "errors", title="reward per scale")
    order = {scale: i for i, scale in enumerate((*SCALES, "unknown", "all"))}
    for scale in sorted(rows, key=order.__getitem__):
        row = rows[scale]
        table.add_row(scale, f"{row['n']:.0f}", f"{row['total']:.3f}",
                      *(f"{row[c]:.3f}" if c in row else "-" for c in components), f"{row['errors']:.0f}")
    return table

