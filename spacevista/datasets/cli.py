"""`spacevista data synth | convert`: argparse wiring and rich summaries for the dataset makers."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spacevista import scales
from spacevista.configs.schema import SynthConfig
from spacevista.datasets.official.convert import DATA_SOURCE, DEFAULT_NUM_FRAMES, ConvertOptions
from spacevista.datasets.official.files import TooManyRejects, convert_dataset
from spacevista.datasets.synthetic.synth import synthesize


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` (with ``synth`` and ``convert``) on a top-level subparsers object; sets ``func=run``."""
    data = subparsers.add_parser("data", help="build datasets: synthetic all-scale scenes, SpaceVista-1M conversion")
    commands = data.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="render synthetic all-scale scenes to parquet (train + test splits)")
    synth.add_argument("--out", required=True, type=Path, help="output directory (gets train/, test/, manifest.json)")
    embedded = SynthConfig()  # the embedded default's data: one home for these defaults
    synth.add_argument("--n", type=int, default=embedded.n, help=f"number of records in all (default {embedded.n})")
    synth.add_argument("--seed", type=int, default=embedded.seed)
    synth.add_argument("--frames", type=int, default=embedded.frames,
                       help=f"frames per clip (default {embedded.frames})")
    synth.add_argument("--size", type=int, default=embedded.size,
                       help=f"frame width and height in pixels (default {embedded.size}, as the embedded default)")
    synth.add_argument("--test-fraction", type=float, default=embedded.test_fraction,
                       help=f"held-out fraction (default {embedded.test_fraction})")
    synth.add_argument("--no-instruction", action="store_true", help="omit the system message with the output format")
    synth.add_argument("--shard-size", type=int, default=1000, help="records per parquet shard")
    synth.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")

    conv = commands.add_parser("convert", help="convert SpaceVista-1M / SpaceVista-Bench JSON or JSONL (every "
                                               "documented shape) to parquet, reporting rejects")
    conv.add_argument("inputs", nargs="+", type=Path, help="JSON (list) or JSONL files")
    conv.add_argument("--out", required=True, type=Path, help="output directory for part-*.parquet")
    conv.add_argument("--media-root", type=Path, default=None,
                      help="directory relative frame paths resolve against (default: each file's folder)")
    where = conv.add_mutually_exclusive_group()
    where.add_argument("--scale", choices=scales.SCALES, help="the scale of items that name none (e.g. the preview)")
    where.add_argument("--group", choices=[g for s in scales.SCALE_SPECS for g in s.groups],
                       help="the SpaceVista-1M data group of items that name none")
    conv.add_argument("--output-format", choices=[f.value for f in scales.OutputFormat],
                      default=scales.OutputFormat.THINK_ANSWER.value,
                      help="what completions must look like (default think_answer: SpaceVista's own, <scale> optional)")
    conv.add_argument("--count-metric", choices=("mra", "exact"), default="mra",
                      help="score counts by MRA (the bench's rule, default) or exactly")
    conv.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                      help=f"frames kept per video, sampled uniformly (default {DEFAULT_NUM_FRAMES}; 0 keeps all)")
    conv.add_argument("--data-source", default=DATA_SOURCE, help=f"data_source column (default {DATA_SOURCE})")
    conv.add_argument("--max-reject-fraction", type=float, default=0.05,
                      help="fail when more than this fraction is rejected (default 0.05)")
    conv.add_argument("--strict", action="store_true", help="fail on any rejected record")
    conv.add_argument("--shard-size", type=int, default=10_000, help="records per parquet shard")
    conv.add_argument("--rejects", type=Path, default=None, help="rejects JSONL (default OUT/rejects.jsonl)")
    conv.add_argument("--no-check-frames", action="store_true", help="do not check that frame files exist")
    conv.add_argument("--no-instruction", action="store_true",
                      help="do not add the output-format instruction to the system message")
    conv.add_argument("--split", default="train", help="split name stored in extra_info (default train)")
    conv.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")

    data.set_defaults(func=run)
    return data


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run a parsed ``data`` command; returns the process exit code."""
    console = console or Console()
    if args.data_command == "synth":
        return run_synth(args, console)
    return run_convert(args, console)


def run_synth(args: argparse.Namespace, console: Console) -> int:
    start = time.perf_counter()
    manifest = synthesize(args.out, args.n, args.seed, frames=args.frames, size=args.size,
                          test_fraction=args.test_fraction, instruction=not args.no_instruction,
                          rows_per_shard=args.shard_size, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    splits = manifest["splits"]
    console.print(_counts_table(f"synthetic scenes (seed {args.seed})",
                                {split: info["scales"] for split, info in splits.items()}, scales.SCALES))
    console.print(_counts_table("tasks", {split: info["tasks"] for split, info in splits.items()},
                                sorted({t for info in splits.values() for t in info["tasks"]})))
    console.print(f"wrote {args.n} records to {args.out} in {seconds:.1f} s "
                  f"({args.frames} frames of {args.size}px; manifest: {args.out / 'manifest.json'})")
    return 0


def run_convert(args: argparse.Namespace, console: Console) -> int:
    try:
        missing = [str(p) for p in args.inputs if not p.is_file()]
        if missing:
            console.print(f"[bold red]error:[/] no such file: {', '.join(missing)}")
            return 2
        options = ConvertOptions(media_root=args.media_root, check_frames=not args.no_check_frames,
                                 data_source=args.data_source, split=args.split, instruction=not args.no_instruction,
                                 default_scale=args.scale or scales.canonical_scale(args.group),
                                 output_format=scales.OutputFormat(args.output_format),
                                 count_metric=args.count_metric, num_frames=args.num_frames)
        report = convert_dataset(args.inputs, args.out, options, shard_size=args.shard_size, rejects_path=args.rejects,
                                 max_reject_fraction=0.0 if args.strict else args.max_reject_fraction,
                                 overwrite=args.overwrite)
    except TooManyRejects as err:
        console.print(f"[bold red]conversion failed:[/] {err}")
        return 1
    console.print(_counts_table("converted records", {"records": report.scales}, scales.SCALES))
    console.print(_counts_table("data groups", {"records": report.groups}, sorted(report.groups)))
    console.print(_counts_table("tasks", {"records": report.tasks}, sorted(report.tasks)))
    if report.rejected:
        console.print(_counts_table("rejected records", {"records": report.rejected}, sorted(report.rejected)))
    console.print(f"{report.converted} of {report.total} converted, {sum(report.rejected.values())} rejected "
                  f"({report.reject_fraction:.1%}); shards in {args.out}; rejects: {report.rejects_path}")
    return 0


def _counts_table(title: str, columns: Mapping[str, Mapping[str, int]], rows: list[str] | tuple[str, ...]) -> Table:
    table = Table(title=title)
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row, *(str(counts.get(row, 0)) for counts in columns.values()))
    return table
